//! `grid audit` against a real registry on SQLite and PostgreSQL: clean figures pass, and a
//! registry whose database was tampered with is caught, whichever way it was done.

// A failed unwrap, expect or assertion is a failed test: the workspace's deny of them is
// for product code.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::process::{Command, Output};

use accounting::PERIOD_SECS;
use gridtypes::{Report, Resources, GIB};
use registry::{Config, Db};
use serde_json::Value;
use test_infra::history::{seed_node, seed_reports, SeededNode};
use test_infra::{now, Engine, Registry};

test_infra::on_both_engines!(
    clean_figures_pass_the_audit,
    a_tampered_reading_is_caught,
    a_forged_report_is_caught,
    an_edited_reward_is_caught,
);

async fn grid(url: &str, args: &[&str]) -> Output {
    let (url, args) = (
        url.to_string(),
        args.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
    );
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_grid"))
            .arg("--registry")
            .arg(url)
            .args(args)
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

struct Setup {
    h: Registry,
    db: Db,
    farm: i64,
    nodes: Vec<SeededNode>,
}

/// Two bare-metal nodes up for their whole first period, under the standard policy.
async fn setup(engine: Engine) -> Option<Setup> {
    let h = Registry::start_with(
        engine,
        Config {
            minting: None,
            ..Config::default()
        },
    )
    .await
    .ok()?;
    let db = Db::connect(h.db_url()).await.unwrap();
    test_infra::history::standard_settings(&db).await;
    let farm = h.farm("audited").await;
    let mut nodes = Vec::new();
    for _ in 0..2 {
        let t0 = now() - PERIOD_SECS - 86_400;
        let capacity = Resources {
            cru: 4,
            mru: 17 * GIB,
            sru: 500 * GIB,
            hru: 0,
            ipv4: 1,
        };
        let node = seed_node(&db, farm, capacity, t0).await;
        let reports: Vec<(i64, Report)> = (t0 + 60..now() - 600)
            .step_by(2400)
            .map(|at| (at, Report::uptime((at - t0 + 60) as u64)))
            .collect();
        seed_reports(&db, &node, &reports).await;
        nodes.push(node);
    }
    Some(Setup { h, db, farm, nodes })
}

async fn close(db: &Db) {
    registry::minting::close_due(db, now(), 3600).await.unwrap();
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// The middle uptime report of `node`.
async fn middle_uptime(db: &Db, node: i64) -> i64 {
    use sqlx::Row;
    let ids: Vec<i64> =
        sqlx::query("SELECT id FROM reports WHERE node_id = $1 AND kind = 'uptime' ORDER BY id")
            .bind(node)
            .fetch_all(&db.pool)
            .await
            .unwrap()
            .iter()
            .map(|r| r.try_get(0).unwrap())
            .collect();
    ids[ids.len() / 2]
}

async fn clean_figures_pass_the_audit(engine: Engine) {
    let Some(s) = setup(engine).await else {
        return;
    };
    close(&s.db).await;
    let id = s.nodes[0].id.to_string();
    let out = grid(&s.h.url(), &["--json", "audit", "node", &id]).await;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let a = json(&out);
    assert_eq!(a["differences"], serde_json::json!([]), "{a}");
    assert_eq!(a["bad"], serde_json::json!([]));
    assert_eq!(a["periods"], 1);
    // CU = min(8, 4, 10) = 4, SU = 2; 4·2.40 + 2·1.00 + 730.8·0.005 = 15.254 USD / 0.08.
    assert_eq!(a["earned"], 1_906_750_000i64, "{a}");
    assert!(a["reports"].as_u64().unwrap() > 1000);
    let out = grid(&s.h.url(), &["audit", "farm", &s.farm.to_string()]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("every figure matches") && text.contains("verified per second"));
}

async fn a_tampered_reading_is_caught(engine: Engine) {
    let Some(s) = setup(engine).await else {
        return;
    };
    // The registry's accounting column says more uptime than the signed report: the
    // registry closes the period on it (a violation), the audit on the signed figures.
    let id = middle_uptime(&s.db, s.nodes[0].id).await;
    sqlx::query("UPDATE reports SET reading = reading + 100000 WHERE id = $1")
        .bind(id)
        .execute(&s.db.pool)
        .await
        .unwrap();
    close(&s.db).await;
    let out = grid(
        &s.h.url(),
        &["--json", "audit", "node", &s.nodes[0].id.to_string()],
    )
    .await;
    assert!(!out.status.success());
    let a = json(&out);
    let what: Vec<&str> = a["differences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["what"].as_str().unwrap())
        .collect();
    assert!(what.contains(&"period 0 outcome"), "{a}");
    assert!(what.contains(&"period 0 violation"), "{a}");
    // The other node of the farm is untouched: the farm audit names one node.
    let out = grid(&s.h.url(), &["audit", "farm", &s.farm.to_string()]).await;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("for 1 node(s)"));
}

async fn a_forged_report_is_caught(engine: Engine) {
    let Some(s) = setup(engine).await else {
        return;
    };
    close(&s.db).await;
    // Someone with the database rewrites a stored envelope's claim; its signature no longer
    // matches.
    use sqlx::Row;
    let id = middle_uptime(&s.db, s.nodes[1].id).await;
    let raw: Vec<u8> = sqlx::query("SELECT envelope FROM reports WHERE id = $1")
        .bind(id)
        .fetch_one(&s.db.pool)
        .await
        .unwrap()
        .try_get(0)
        .unwrap();
    let mut env: gridtypes::Envelope = serde_json::from_slice(&raw).unwrap();
    let forged = Report::uptime(1);
    env.payload = gridtypes::Payload::Report(forged).to_bytes();
    sqlx::query("UPDATE reports SET envelope = $1 WHERE id = $2")
        .bind(env.to_json())
        .bind(id)
        .execute(&s.db.pool)
        .await
        .unwrap();
    let out = grid(
        &s.h.url(),
        &["--json", "audit", "node", &s.nodes[1].id.to_string()],
    )
    .await;
    assert!(!out.status.success());
    let a = json(&out);
    assert_eq!(a["bad"][0]["id"], id, "{a}");
    assert!(
        a["bad"][0]["why"].as_str().unwrap().contains("signature"),
        "{a}"
    );
}

async fn an_edited_reward_is_caught(engine: Engine) {
    let Some(s) = setup(engine).await else {
        return;
    };
    close(&s.db).await;
    // Append-only is enforced by triggers; an operator who drops one and doubles a
    // published reward is still caught.
    let drop = match s.h.engine() {
        Engine::Sqlite => "DROP TRIGGER periods_append_only_u",
        Engine::Postgres => "DROP TRIGGER periods_append_only ON periods",
    };
    sqlx::query(drop).execute(&s.db.pool).await.unwrap();
    sqlx::query("UPDATE periods SET tft = tft * 2 WHERE node_id = $1")
        .bind(s.nodes[0].id)
        .execute(&s.db.pool)
        .await
        .unwrap();
    let out = grid(&s.h.url(), &["audit", "node", &s.nodes[0].id.to_string()]).await;
    assert!(!out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("DIFFERENT period 0 tft"), "{text}");
}
