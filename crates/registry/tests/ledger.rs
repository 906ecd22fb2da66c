//! Minting and the ledger on a real database: a month of signed reports earns the reward
//! worked out by hand, closing twice books nothing twice, the ledger always balances and
//! cannot be edited, on SQLite and on PostgreSQL.

// A failed unwrap, expect or assertion is a failed test: the workspace's deny of them is
// for product code.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use accounting::{Account, Outcome, Tft, PERIOD_SECS, TFT_UNITS};
use gridapi::{paths, BalanceView, Page, PeriodView, TransactionView};
use gridtypes::{Consumption, Report, Resources, GIB};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use registry::ledger::{self, NewPolicy};
use registry::minting::{close_due, Closed};
use registry::{Config, Db};
use test_infra::client::error_code;
use test_infra::history::{seed_node, seed_reports, SeededNode};
use test_infra::{now, Engine, Registry};

test_infra::on_both_engines!(
    a_month_of_reports_earns_the_worked_example_once,
    downtime_below_the_sla_and_violations_earn_nothing,
    the_ledger_always_balances,
    the_ledger_and_closed_periods_cannot_be_edited,
    bad_ledger_reads_and_operator_input_are_refused,
);

const EVERY: i64 = 40 * 60;
const SETTLE: i64 = 3600;

async fn start(engine: Engine) -> Option<(Registry, Db)> {
    let config = Config {
        minting: None,
        ..Config::default()
    };
    let h = Registry::start_with(engine, config).await.ok()?;
    let db = Db::connect(h.db_url()).await.unwrap();
    Some((h, db))
}

/// 8 cores, 33 GiB, 1000 GiB SSD, 2400 GiB HDD, 2 IPv4: CU 8, SU 6 (as in accounting's
/// worked example).
fn capacity() -> Resources {
    Resources {
        cru: 8,
        mru: 33 * GIB,
        sru: 1000 * GIB,
        hru: 2400 * GIB,
        ipv4: 2,
    }
}

/// The grid's usual rates as the default policy, and a TFT price of 0.08 USD.
async fn settings(db: &Db) {
    test_infra::history::standard_settings(db).await;
}

/// A farm (with its owner's twin id) on the registry.
async fn farm(h: &Registry, name: &str) -> (i64, i64) {
    let farm = h.farm(name).await;
    let (_, v) = h.get(&format!("{}/{farm}", paths::FARMS)).await;
    (farm, v["twin_id"].as_i64().unwrap())
}

/// A node connected one period plus a day ago, reporting uptime every 40 min until now,
/// booted an hour before it connected; `edit` may change the reports.
async fn month_old_node(
    db: &Db,
    farm: i64,
    edit: impl FnOnce(&mut Vec<(i64, Report)>),
) -> (SeededNode, i64) {
    let t0 = now() - PERIOD_SECS - 86_400;
    let node = seed_node(db, farm, capacity(), t0).await;
    let mut reports: Vec<(i64, Report)> = (t0 + 60..now() - 600)
        .step_by(EVERY as usize)
        .map(|at| (at, Report::uptime((at - t0 + 3600) as u64)))
        .collect();
    reports.push((
        t0 + 5000,
        Report::Consumption(Consumption {
            used: Resources::default(),
            traffic_bytes: 100 * GIB,
            contracts: Vec::new(),
        }),
    ));
    edit(&mut reports);
    seed_reports(db, &node, &reports).await;
    (node, t0)
}

async fn balance(h: &Registry, account: &str) -> Tft {
    let (s, v) = h
        .get(&format!("{}/{account}", paths::LEDGER_ACCOUNTS))
        .await;
    assert_eq!(s, 200, "{v}");
    serde_json::from_value::<BalanceView>(v).unwrap().balance
}

async fn periods(h: &Registry, node: i64) -> Vec<PeriodView> {
    let (s, v) = h.get(&format!("{}?node={node}", paths::PERIODS)).await;
    assert_eq!(s, 200, "{v}");
    serde_json::from_value::<Page<PeriodView>>(v).unwrap().items
}

async fn a_month_of_reports_earns_the_worked_example_once(engine: Engine) {
    let Some((h, db)) = start(engine).await else {
        return;
    };
    settings(&db).await;
    let (farm, owner) = farm(&h, "sunny").await;
    let (node, t0) = month_old_node(&db, farm, |_| {}).await;

    let closed = close_due(&db, now(), SETTLE).await.unwrap();
    // 8·2.40 + 6·1.00 + 100·0.03 + 2·730.8·0.005 = 35.508 USD; / 0.08 = 443.85 TFT.
    let reward = Tft(443 * TFT_UNITS + 8_500_000);
    assert_eq!(
        closed,
        Closed {
            periods: 1,
            paid: 1,
            minted: reward
        }
    );
    let owner_account = Account::Twin(owner).to_string();
    assert_eq!(balance(&h, &owner_account).await, reward);
    assert_eq!(balance(&h, "mint").await, Tft(-reward.0));

    let list = periods(&h, node.id).await;
    assert_eq!(list.len(), 1);
    let p = &list[0];
    assert_eq!((p.index, p.start, p.end), (0, t0, t0 + PERIOD_SECS));
    assert_eq!((p.up_secs, p.outcome.as_str()), (PERIOD_SECS, "paid"));
    assert_eq!((p.usd, p.tft), (35_508_000, reward));

    // The receipt lists every input and gives the same figures when computed again.
    let (s, v) = h.get(&format!("{}/{}", paths::PERIODS, p.id)).await;
    assert_eq!(s, 200, "{v}");
    let full: PeriodView = serde_json::from_value(v).unwrap();
    let receipt = full.receipt.unwrap();
    assert_eq!(receipt.outcome, Outcome::Paid);
    assert_eq!(receipt.input.connected, capacity());
    assert_eq!(receipt.input.price, Some(80_000));
    assert_eq!(receipt.input.traffic_bytes, 100 * GIB);
    assert_eq!(receipt.input.policy.as_ref().unwrap().name, "standard");
    assert_eq!(receipt.recomputed(), receipt);

    // The transaction pays the farm's twin from the mint, and balances.
    let (s, v) = h
        .get(&format!(
            "{}/{}",
            paths::LEDGER_TRANSACTIONS,
            p.tx_id.unwrap()
        ))
        .await;
    assert_eq!(s, 200, "{v}");
    let tx: TransactionView = serde_json::from_value(v).unwrap();
    assert_eq!(tx.reference, format!("reward:node:{}:period:0", node.id));
    assert_eq!(tx.entries.iter().map(|e| e.amount.0).sum::<i64>(), 0);
    assert!(tx
        .entries
        .iter()
        .any(|e| e.account == Account::Twin(owner) && e.amount == reward));

    // Closing again, or from a second replica at once, books nothing more.
    let (a, b) = tokio::join!(close_due(&db, now(), SETTLE), close_due(&db, now(), SETTLE));
    assert_eq!(a.unwrap().periods + b.unwrap().periods, 0);
    assert_eq!(balance(&h, &owner_account).await, reward);
    assert_eq!(periods(&h, node.id).await.len(), 1);

    // The next period is not due until it ended and settled.
    let next_end = t0 + 2 * PERIOD_SECS;
    assert_eq!(
        close_due(&db, next_end + SETTLE - 1, SETTLE)
            .await
            .unwrap()
            .periods,
        0
    );
}

async fn downtime_below_the_sla_and_violations_earn_nothing(engine: Engine) {
    let Some((h, db)) = start(engine).await else {
        return;
    };
    settings(&db).await;
    let (farm, owner) = farm(&h, "cloudy").await;
    // Down two days in the middle (no reports; the next one shows a fresh boot): 93.4 %.
    let (down, t0) = month_old_node(&db, farm, |r| {
        let from = t0_of(r) + 10 * 86_400;
        let boot = from + 2 * 86_400;
        r.retain(|(at, _)| *at < from || *at > boot);
        for (at, rep) in r.iter_mut() {
            if *at > boot {
                *rep = Report::uptime((*at - boot) as u64);
            }
        }
    })
    .await;
    // Claims an hour of uptime in 40 minutes once.
    let (liar, _) = month_old_node(&db, farm, |r| {
        let i = r.len() / 2;
        for (_, rep) in r.iter_mut().skip(i) {
            if let Report::Uptime { uptime_secs, .. } = rep {
                *uptime_secs += 1200;
            }
        }
    })
    .await;
    let closed = close_due(&db, now(), SETTLE).await.unwrap();
    assert_eq!((closed.periods, closed.paid, closed.minted), (2, 0, Tft(0)));

    let p = &periods(&h, down.id).await[0];
    assert_eq!(p.outcome, "below_sla");
    // Up to the last report before the gap, then from the boot: the gap and the boot time
    // before the first report after it are down.
    assert!(p.up_secs < PERIOD_SECS * 950 / 1000, "{}", p.up_secs);
    assert!(
        p.up_secs > PERIOD_SECS - 2 * 86_400 - 2 * EVERY,
        "{}",
        p.up_secs
    );
    assert_eq!((p.tft, p.tx_id), (Tft(0), None));
    let p = &periods(&h, liar.id).await[0];
    assert_eq!(p.outcome, "violation");
    assert_eq!(balance(&h, &Account::Twin(owner).to_string()).await, Tft(0));
    let _ = t0;
}

fn t0_of(reports: &[(i64, Report)]) -> i64 {
    reports.iter().map(|(at, _)| *at).min().unwrap() - 60
}

/// Operations a property run applies to the ledger.
#[derive(Debug, Clone)]
enum Op {
    Deposit {
        twin: usize,
        units: i64,
        reference: u8,
    },
    Close,
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    prop::collection::vec(
        prop_oneof![
            4 => (0usize..3, 1i64..i64::MAX / 1024, 0u8..6)
                .prop_map(|(twin, units, reference)| Op::Deposit { twin, units, reference }),
            1 => Just(Op::Close),
        ],
        1..12,
    )
}

async fn assert_balanced(db: &Db) {
    test_infra::history::assert_ledger_balanced(db).await;
}

async fn the_ledger_always_balances(engine: Engine) {
    let Some((h, db)) = start(engine).await else {
        return;
    };
    settings(&db).await;
    let mut twins = Vec::new();
    for _ in 0..3 {
        twins.push(h.twin().await.1);
    }
    let (farm, _) = farm(&h, "windy").await;
    for _ in 0..3 {
        month_old_node(&db, farm, |_| {}).await;
    }
    let mut runner = proptest::test_runner::TestRunner::new(proptest::test_runner::Config {
        cases: 16,
        ..Default::default()
    });
    let mut credited: std::collections::HashMap<String, (usize, i64)> = Default::default();
    let mut closed_once = false;
    for case in 0..16 {
        let plan = ops().new_tree(&mut runner).unwrap().current();
        for op in plan {
            match op {
                Op::Deposit {
                    twin,
                    units,
                    reference,
                } => {
                    let reference = format!("case{}-{reference}", case % 4);
                    let booked = ledger::deposit(&db, twins[twin], Tft(units), &reference, now())
                        .await
                        .unwrap();
                    // A reference is credited the first time only.
                    assert_eq!(booked.is_some(), !credited.contains_key(&reference));
                    credited.entry(reference).or_insert((twin, units));
                }
                Op::Close => {
                    // The three nodes' periods are closed by the first close of the run and
                    // by no other, however many follow.
                    let c = close_due(&db, now(), SETTLE).await.unwrap();
                    assert_eq!(c.periods, if closed_once { 0 } else { 3 }, "{c:?}");
                    closed_once = true;
                }
            }
            assert_balanced(&db).await;
        }
    }
    for (i, twin) in twins.iter().enumerate() {
        let expected: i64 = credited
            .values()
            .filter(|(t, _)| *t == i)
            .map(|(_, u)| *u)
            .sum();
        assert_eq!(
            balance(&h, &Account::Twin(*twin).to_string()).await,
            Tft(expected)
        );
    }
}

async fn the_ledger_and_closed_periods_cannot_be_edited(engine: Engine) {
    let Some((h, db)) = start(engine).await else {
        return;
    };
    settings(&db).await;
    let (farm, _) = farm(&h, "rainy").await;
    month_old_node(&db, farm, |_| {}).await;
    close_due(&db, now(), SETTLE).await.unwrap();
    for sql in [
        "UPDATE ledger_entries SET amount = amount + 1",
        "DELETE FROM ledger_entries",
        "UPDATE ledger_transactions SET memo = '{}'",
        "DELETE FROM ledger_transactions",
        "UPDATE periods SET tft = tft + 1",
        "DELETE FROM periods",
    ] {
        let e = sqlx::query(sql).execute(&db.pool).await.unwrap_err();
        assert!(e.to_string().contains("append-only"), "{sql}: {e}");
    }
    assert_balanced(&db).await;
}

async fn bad_ledger_reads_and_operator_input_are_refused(engine: Engine) {
    let Some((h, db)) = start(engine).await else {
        return;
    };
    for bad in [
        "twin:07",
        "twin:0",
        "TWIN:1",
        "farm:1",
        "twin:-1",
        "twin:99999999999999999999",
    ] {
        let (s, v) = h.get(&format!("{}/{bad}", paths::LEDGER_ACCOUNTS)).await;
        assert_eq!((s, error_code(&v)), (400, "malformed"), "{bad}: {v}");
    }
    // An account never booked on has nothing.
    assert_eq!(balance(&h, "twin:12345").await, Tft(0));
    for bad in ["01", "-1", "x"] {
        let (s, _) = h.get(&format!("{}/{bad}", paths::PERIODS)).await;
        assert_eq!(s, 400, "{bad}");
    }
    let (s, _) = h.get(&format!("{}/999", paths::PERIODS)).await;
    assert_eq!(s, 404);
    let (s, _) = h.get(&format!("{}/999", paths::LEDGER_TRANSACTIONS)).await;
    assert_eq!(s, 404);
    let (s, v) = h.get(&format!("{}?node=1&bogus=2", paths::PERIODS)).await;
    assert_eq!(s, 400, "{v}");

    let twin = h.twin().await.1;
    let rates = accounting::Rates {
        cu: 1,
        su: 1,
        nu: 1,
        ipv4: 1,
        sla_permill: 950,
    };
    let base = NewPolicy {
        name: "p".into(),
        rates,
        default: false,
    };
    for bad in [
        NewPolicy {
            rates: accounting::Rates {
                sla_permill: 1001,
                ..rates
            },
            ..base.clone()
        },
        NewPolicy {
            name: "".into(),
            ..base.clone()
        },
        NewPolicy {
            name: "a b".into(),
            ..base.clone()
        },
        NewPolicy {
            rates: accounting::Rates {
                cu: ledger::MAX_MICRO_USD + 1,
                ..rates
            },
            ..base.clone()
        },
    ] {
        assert!(
            ledger::create_policy(&db, &bad, now()).await.is_err(),
            "{bad:?}"
        );
    }
    ledger::create_policy(&db, &base, now()).await.unwrap();
    assert!(
        ledger::create_policy(&db, &base, now()).await.is_err(),
        "duplicate name"
    );
    assert!(ledger::attach_policy(&db, 999, None).await.is_err());
    assert!(ledger::attach_policy(&db, 1, Some(999)).await.is_err());
    assert!(ledger::set_price(&db, 0, now()).await.is_err());
    assert!(ledger::deposit(&db, twin, Tft(0), "r", now())
        .await
        .is_err());
    assert!(ledger::deposit(&db, twin, Tft(-5), "r", now())
        .await
        .is_err());
    assert!(ledger::deposit(&db, 999, Tft(5), "r", now()).await.is_err());
    assert!(ledger::deposit(&db, twin, Tft(5), "", now()).await.is_err());
    assert!(ledger::deposit(&db, twin, Tft(5), "a\nb", now())
        .await
        .is_err());
    // Nothing of that was booked.
    let (s, v) = h.get(&format!("{}/deposits", paths::LEDGER_ACCOUNTS)).await;
    assert_eq!(s, 200);
    assert_eq!(v["entries"], 0);
    let (s, v) = h.get(paths::POLICIES).await;
    assert_eq!((s, v.as_array().unwrap().len()), (200, 1), "{v}");
}
