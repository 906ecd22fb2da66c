//! Benchmarks of issue 14: closing a month of minting periods for many nodes, `grid audit`
//! throughput against the ed25519 ceiling, and the web page's time to first byte with
//! many nodes. The history is seeded straight into the database as real envelopes signed
//! in the past (the API takes only fresh ones), on all cores.

use std::time::{Duration, Instant};

use accounting::PERIOD_SECS;
use anyhow::Context;
use ed25519_dalek::SigningKey;
use gridtypes::{Consumption, Envelope, Payload, Report, Resources, GIB};
use rand::rngs::OsRng;
use registry::{Background, Config, Db};
use serde_json::{json, Value};
use sqlx::Row;
use test_infra::{nonce, Engine};

use crate::DbKind;

/// Uptime reports every 40 minutes, as the agent sends them.
const EVERY: i64 = 40 * 60;
/// Nodes per farm in the seeded grids.
const PER_FARM: usize = 100;

/// A seeded database.
pub struct Seeded {
    pub db: Db,
    pub url: String,
    _dir: Option<tempfile::TempDir>,
    pub farms: Vec<i64>,
    pub reports: u64,
    pub seed_secs: f64,
}

fn engine(kind: DbKind) -> Engine {
    match kind {
        DbKind::Sqlite => Engine::Sqlite,
        DbKind::Postgres => Engine::Postgres,
    }
}

/// `rows` rows of `cols` placeholders: `?` on SQLite (its numbered lookup is linear per
/// parameter), `$n` on PostgreSQL.
fn placeholders(kind: DbKind, rows: usize, cols: usize) -> String {
    let mut out = String::new();
    for r in 0..rows {
        out.push_str(if r == 0 { "(" } else { ", (" });
        for c in 0..cols {
            if c > 0 {
                out.push_str(", ");
            }
            match kind {
                DbKind::Sqlite => out.push('?'),
                DbKind::Postgres => out.push_str(&format!("${}", r * cols + c + 1)),
            }
        }
        out.push(')');
    }
    out
}

type Row7 = (i64, &'static str, i64, String, Vec<u8>, Option<i64>);

/// A node's month: its registration at `t0`, uptime every 40 minutes until a report after
/// its first period's end, and a consumption report a day.
fn month(key: &SigningKey, node: i64, farm: i64, capacity: Resources, t0: i64) -> Vec<Row7> {
    let mut rows = Vec::with_capacity(1200);
    let reg = test_infra::client::node_registration(farm, capacity);
    let mut reg = reg;
    if let Payload::RegisterNode(r) = &mut reg {
        r.virtualized = false;
    }
    let env = Envelope::seal(key, &reg, t0, nonce());
    rows.push((
        node,
        "registration",
        t0,
        env.nonce.clone(),
        env.to_json(),
        None,
    ));
    let mut at = t0 + 60;
    while at <= t0 + PERIOD_SECS + EVERY {
        let up = (at - t0 + 600) as u64;
        let env = Envelope::seal(key, &Payload::Report(Report::uptime(up)), at, nonce());
        rows.push((
            node,
            "uptime",
            at,
            env.nonce.clone(),
            env.to_json(),
            Some(up as i64),
        ));
        at += EVERY;
    }
    let mut at = t0 + 3600;
    while at < t0 + PERIOD_SECS {
        let bytes = 3 * GIB;
        let c = Report::Consumption(Consumption {
            used: Resources::default(),
            traffic_bytes: bytes,
            contracts: Vec::new(),
        });
        let env = Envelope::seal(key, &Payload::Report(c), at, nonce());
        rows.push((
            node,
            "consumption",
            at,
            env.nonce.clone(),
            env.to_json(),
            Some(bytes as i64),
        ));
        at += 86_400;
    }
    rows
}

async fn insert_reports(db: &Db, kind: DbKind, rows: &[Row7]) -> anyhow::Result<()> {
    let mut tx = db.begin_write().await?;
    for chunk in rows.chunks(1000) {
        let sql = format!(
            "INSERT INTO reports (node_id, kind, signed_at, received_at, nonce, envelope, reading) VALUES {}",
            placeholders(kind, chunk.len(), 7)
        );
        let mut q = sqlx::query(&sql);
        for (node, k, at, n, env, reading) in chunk {
            q = q
                .bind(*node)
                .bind(*k)
                .bind(*at)
                .bind(*at)
                .bind(n.clone())
                .bind(env.clone())
                .bind(*reading);
        }
        q.execute(&mut *tx).await?;
    }
    tx.commit().await?;
    Ok(())
}

/// A fresh database with `nodes` nodes in farms of 100, each first registered a period and
/// a few days ago; with `history`, each with its month of signed reports.
pub async fn seed(kind: DbKind, nodes: usize, history: bool) -> anyhow::Result<Seeded> {
    let (url, dir) = test_infra::registry::fresh_database(engine(kind))
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.reason))?;
    let db = Db::connect(&url).await?;
    let started = Instant::now();
    let owner = SigningKey::generate(&mut OsRng);
    let twin_env = Envelope::seal(&owner, &Payload::RegisterTwin {}, gridtypes::now(), nonce());
    let twin: i64 = sqlx::query(
        "INSERT INTO twins (public_key, envelope, created_at) VALUES ($1, $2, $3) RETURNING id",
    )
    .bind(hex::encode(owner.verifying_key().as_bytes()))
    .bind(twin_env.to_json())
    .bind(gridtypes::now())
    .fetch_one(&db.pool)
    .await?
    .try_get(0)?;
    let mut farms = Vec::new();
    for f in 0..nodes.div_ceil(PER_FARM) {
        let id: i64 = sqlx::query(
            "INSERT INTO farms (name, twin_id, envelope, created_at) VALUES ($1, $2, $3, $4) RETURNING id",
        )
        .bind(format!("farm-{f}"))
        .bind(twin)
        .bind(twin_env.to_json())
        .bind(gridtypes::now())
        .fetch_one(&db.pool)
        .await?
        .try_get(0)?;
        farms.push(id);
    }
    let capacity = Resources {
        cru: 8,
        mru: 33 * GIB,
        sru: 1000 * GIB,
        hru: 2400 * GIB,
        ipv4: 1,
    };
    let base = gridtypes::now() - PERIOD_SECS - 3 * 86_400;
    let mut reports = 0u64;
    // A batch of nodes at a time: rows signed on all cores, then stored in one transaction.
    for batch in (0..nodes).collect::<Vec<_>>().chunks(200) {
        let mut ids = Vec::with_capacity(batch.len());
        let mut tx = db.begin_write().await?;
        for &i in batch {
            let key = SigningKey::generate(&mut OsRng);
            let farm = farms[i / PER_FARM];
            let t0 = base + (i as i64 % EVERY);
            // Half the grid reported within the up window, half did not.
            let last_seen = if i % 2 == 0 { gridtypes::now() } else { t0 };
            let id = test_infra::history::insert_node(&mut tx, &key, farm, capacity, t0, last_seen)
                .await?;
            ids.push((id, key, farm, t0));
        }
        tx.commit().await?;
        if !history {
            continue;
        }
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
        let per = ids.len().div_ceil(threads).max(1);
        let rows: Vec<Row7> = std::thread::scope(|s| {
            let hs: Vec<_> = ids
                .chunks(per)
                .map(|part| {
                    s.spawn(move || {
                        part.iter()
                            .flat_map(|(id, key, farm, t0)| month(key, *id, *farm, capacity, *t0))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            hs.into_iter()
                .flat_map(|h| h.join().unwrap_or_default())
                .collect()
        });
        reports += rows.len() as u64;
        insert_reports(&db, kind, &rows).await?;
    }
    test_infra::history::standard_settings(&db).await;
    Ok(Seeded {
        db,
        url,
        _dir: dir,
        farms,
        reports,
        seed_secs: started.elapsed().as_secs_f64(),
    })
}

/// Period closing for each size of grid, each on a fresh database.
pub async fn close_periods(kind: DbKind, sizes: &[usize]) -> anyhow::Result<Value> {
    let mut runs = Vec::new();
    for &nodes in sizes {
        let s = seed(kind, nodes, true).await?;
        eprintln!(
            "seeded {nodes} nodes, {} reports in {:.0} s",
            s.reports, s.seed_secs
        );
        let started = Instant::now();
        let closed = registry::minting::close_due(&s.db, gridtypes::now(), 3600).await?;
        let secs = started.elapsed().as_secs_f64();
        anyhow::ensure!(
            closed.periods as usize == nodes && closed.paid as usize == nodes,
            "closed {closed:?} for {nodes} nodes"
        );
        // Closing again finds nothing to do: what that costs is the idle round of the server.
        let started = Instant::now();
        let again = registry::minting::close_due(&s.db, gridtypes::now(), 3600).await?;
        let idle = started.elapsed().as_secs_f64();
        anyhow::ensure!(again.periods == 0, "second close booked {again:?}");
        let run = json!({
            "nodes": nodes,
            "reports": s.reports,
            "close_secs": (secs * 100.0).round() / 100.0,
            "nodes_per_sec": (nodes as f64 / secs).round(),
            "reports_per_sec": (s.reports as f64 / secs).round(),
            "second_close_secs": (idle * 1000.0).round() / 1000.0,
            "minted_tft": closed.minted.to_string(),
        });
        eprintln!("{run}");
        runs.push(run);
    }
    Ok(json!({
        "test": "close-periods",
        "db": format!("{kind:?}").to_lowercase(),
        "runs": runs,
    }))
}

/// `grid audit farm` over one farm of 100 nodes with a closed month each: messages verified
/// per second by the audit, and its wall time.
pub async fn audit(kind: DbKind, grid_bin: &std::path::Path) -> anyhow::Result<Value> {
    let s = seed(kind, PER_FARM, true).await?;
    registry::minting::close_due(&s.db, gridtypes::now(), 3600).await?;
    let config = Config {
        minting: None,
        sample_every: None,
        ..Config::default()
    };
    let server = Background::start(&s.url, ([127, 0, 0, 1], 0).into(), config).await?;
    let url = server.url();
    let farm = s.farms[0].to_string();
    let bin = grid_bin.to_path_buf();
    let started = Instant::now();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(bin)
            .args(["--registry", &url, "--json", "audit", "farm", &farm])
            .output()
    })
    .await??;
    let wall = started.elapsed().as_secs_f64();
    anyhow::ensure!(
        out.status.success(),
        "grid audit failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).context("grid audit --json")?;
    let verified: u64 = v["nodes"]
        .as_array()
        .map(|n| n.iter().filter_map(|a| a["reports"].as_u64()).sum())
        .unwrap_or(0);
    Ok(json!({
        "test": "audit",
        "db": format!("{kind:?}").to_lowercase(),
        "nodes": PER_FARM,
        "messages": verified,
        "verified_per_sec": v["reports_per_sec"].as_f64().unwrap_or(0.0).round(),
        "wall_secs": (wall * 100.0).round() / 100.0,
        "messages_per_sec_end_to_end": (verified as f64 / wall).round(),
    }))
}

/// Time to first byte of the web pages with `nodes` nodes registered.
pub async fn web_ttfb(kind: DbKind, nodes: usize, requests: usize) -> anyhow::Result<Value> {
    let s = seed(kind, nodes, false).await?;
    eprintln!("seeded {nodes} nodes in {:.0} s", s.seed_secs);
    for k in 0..(7 * 24 * 6) {
        let at = gridtypes::now() - k * 600;
        sqlx::query(
            "INSERT INTO grid_samples (at, nodes, nodes_up, cu_up, su_up) VALUES ($1, $2, $3, 0.0, 0.0)",
        )
        .bind(at)
        .bind(nodes as i64)
        .bind((nodes / 2) as i64)
        .execute(&s.db.pool)
        .await?;
    }
    let config = Config {
        minting: None,
        sample_every: None,
        ..Config::default()
    };
    let server = Background::start(&s.url, ([127, 0, 0, 1], 0).into(), config).await?;
    let http = reqwest::Client::new();
    let mut out = serde_json::Map::new();
    for (name, path) in [
        ("grid", "/".to_string()),
        ("farm", format!("/farms/{}", s.farms[0])),
        ("node", "/nodes/1".to_string()),
    ] {
        let mut lat: Vec<f64> = Vec::with_capacity(requests);
        for _ in 0..requests {
            let t = Instant::now();
            let r = http
                .get(format!("{}{path}", server.url()))
                .timeout(Duration::from_secs(60))
                .send()
                .await?;
            lat.push(t.elapsed().as_secs_f64() * 1000.0);
            anyhow::ensure!(r.status() == 200, "{path}: {}", r.status());
            let _ = r.bytes().await?;
        }
        lat.sort_by(f64::total_cmp);
        let pct = |p: f64| lat[((lat.len() - 1) as f64 * p).round() as usize];
        out.insert(
            name.into(),
            json!({ "p50_ms": (pct(0.5) * 10.0).round() / 10.0, "p99_ms": (pct(0.99) * 10.0).round() / 10.0 }),
        );
    }
    Ok(json!({
        "test": "web-ttfb",
        "db": format!("{kind:?}").to_lowercase(),
        "nodes": nodes,
        "requests": requests,
        "pages": out,
    }))
}
