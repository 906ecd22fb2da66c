//! The registry's web page, rendered by a real browser (Debian's headless Chromium) on SQLite
//! and on PostgreSQL: the key figures are read back from the rendered page and a screenshot
//! of each page is kept (target/artifacts/, or $GRIDOS_ARTIFACTS) for a person to look at.

// A failed unwrap, expect or assertion is a failed test: the workspace's deny of them is
// for product code.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};
use std::process::Command;

use accounting::PERIOD_SECS;
use gridtypes::{Report, Resources, GIB};
use registry::{Config, Db};
use test_infra::history::{seed_node, seed_reports};
use test_infra::{now, Engine, Registry};

test_infra::on_both_engines!(the_web_page_shows_the_grid_in_a_browser);

fn artifacts() -> PathBuf {
    let dir = std::env::var_os("GRIDOS_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../target/artifacts"));
    std::fs::create_dir_all(&dir).unwrap();
    dir.canonicalize().unwrap()
}

/// Runs headless Chromium on `url` with `args`. The browser may reach only this machine's
/// loopback: every other name fails to resolve and every other address goes to a proxy
/// that does not exist, and its own background services are off.
fn chromium(chromium: &Path, profile: &Path, url: &str, args: &[&str]) -> std::process::Output {
    Command::new(chromium)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-default-apps",
            "--disable-breakpad",
            "--disable-domain-reliability",
            "--disable-features=Translate,OptimizationHints,MediaRouter,DialMediaRouteProvider,AutofillServerCommunication",
            "--metrics-recording-only",
            "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE 127.0.0.1",
            // Loopback bypasses a proxy by default: the pages load, nothing else does.
            "--proxy-server=127.0.0.1:9",
            "--hide-scrollbars",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .output()
        .unwrap()
}

/// The text of the element with `id` in a rendered DOM.
fn text_of(dom: &str, id: &str) -> String {
    let start = dom
        .find(&format!("id=\"{id}\""))
        .unwrap_or_else(|| panic!("no #{id} in the page"));
    let rest = &dom[start..];
    let open = rest.find('>').unwrap() + 1;
    let close = rest.find("</b>").unwrap();
    // Strip any inner tags (the status is a span).
    let mut out = String::new();
    let mut in_tag = false;
    for c in rest[open..close].chars() {
        match c {
            '<' => in_tag = true,
            '>' => in_tag = false,
            c if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.trim().to_string()
}

async fn the_web_page_shows_the_grid_in_a_browser(engine: Engine) {
    let browser = match test_infra::require_tool("chromium") {
        Ok(p) => p,
        Err(skip) => {
            eprintln!("{}", skip.reason);
            return;
        }
    };
    let config = Config {
        minting: None,
        sample_every: None,
        ..Config::default()
    };
    let Ok(h) = Registry::start_with(engine, config).await else {
        return;
    };
    let db = Db::connect(h.db_url()).await.unwrap();
    test_infra::history::standard_settings(&db).await;
    let farm = h.farm("solar-one").await;
    // Two nodes with a closed, paid month behind them (silent now), one up now.
    let capacity = Resources {
        cru: 4,
        mru: 17 * GIB,
        sru: 500 * GIB,
        hru: 2400 * GIB,
        ipv4: 0,
    };
    let mut seeded = Vec::new();
    for _ in 0..2 {
        let t0 = now() - PERIOD_SECS - 86_400;
        let node = seed_node(&db, farm, capacity, t0).await;
        let reports: Vec<(i64, Report)> = (t0 + 60..now() - 7200)
            .step_by(2400)
            .map(|at| (at, Report::uptime((at - t0 + 60) as u64)))
            .collect();
        seed_reports(&db, &node, &reports).await;
        seeded.push(node.id);
    }
    registry::minting::close_due(&db, now(), 3600)
        .await
        .unwrap();
    let (_, live) = h.node(farm, capacity).await;
    // A week of samples: 2 nodes up until a day ago, then 1.
    for k in 0..(7 * 24) {
        let at = now() - k * 3600;
        let up = if k < 24 { 1 } else { 2 };
        sqlx::query("INSERT INTO grid_samples (at, nodes, nodes_up, cu_up, su_up) VALUES ($1, 3, $2, 4.0, 3.0)")
            .bind(at)
            .bind(up)
            .execute(&db.pool)
            .await
            .unwrap();
    }

    let profile = tempfile::tempdir().unwrap();
    let out_dir = artifacts();
    let tag = match engine {
        Engine::Sqlite => "sqlite",
        Engine::Postgres => "postgres",
    };
    let base = h.url();
    let pages = [
        ("grid", format!("{base}/")),
        ("farm", format!("{base}/farms/{farm}")),
        ("node", format!("{base}/nodes/{}", seeded[0])),
    ];
    let mut doms = Vec::new();
    for (name, url) in &pages {
        let (b, p, u) = (browser.clone(), profile.path().join(*name), url.clone());
        let shot = out_dir.join(format!("web-{name}-{tag}.png"));
        let shot_arg = format!("--screenshot={}", shot.display());
        let out = tokio::task::spawn_blocking(move || {
            // A profile each: a second browser on one profile hands its work to the first.
            let dom = chromium(&b, &p.join("dom"), &u, &["--dump-dom"]);
            let png = chromium(
                &b,
                &p.join("shot"),
                &u,
                &[&shot_arg, "--window-size=1200,1500"],
            );
            (dom, png)
        })
        .await
        .unwrap();
        assert!(
            out.0.status.success(),
            "{}",
            String::from_utf8_lossy(&out.0.stderr)
        );
        assert!(
            out.1.status.success(),
            "{}",
            String::from_utf8_lossy(&out.1.stderr)
        );
        let png = std::fs::read(&shot).unwrap_or_else(|e| {
            panic!(
                "{}: {e}; chromium said: {}",
                shot.display(),
                String::from_utf8_lossy(&out.1.stderr)
            )
        });
        assert!(
            png.starts_with(b"\x89PNG") && png.len() > 10_000,
            "{}",
            shot.display()
        );
        println!("screenshot: {}", shot.display());
        doms.push(String::from_utf8(out.0.stdout).unwrap());
    }
    let (grid, farm_dom, node_dom) = (&doms[0], &doms[1], &doms[2]);
    assert_eq!(text_of(grid, "nodes-up"), "1");
    assert_eq!(text_of(grid, "nodes-all"), "3");
    assert_eq!(text_of(grid, "farms"), "1");
    // CU = min(8, 4, 10) = 4 of the one node up; SU = 2 + 2 = 4.
    assert_eq!(text_of(grid, "up-cu"), "4.00");
    assert_eq!(text_of(grid, "up-su"), "4.00");
    // Each seeded node: 4·2.40 + 4·1.00 = 13.60 USD = 170 TFT at 0.08.
    assert_eq!(text_of(grid, "minted"), "340");
    assert_eq!(text_of(grid, "periods"), "2");
    assert!(grid.contains("<polyline"), "the nodes-up chart is drawn");
    assert!(grid.contains("solar-one"));
    assert_eq!(text_of(farm_dom, "farm-nodes"), "3");
    assert_eq!(text_of(farm_dom, "farm-up"), "1");
    assert_eq!(text_of(farm_dom, "farm-balance"), "340");
    assert!(farm_dom.contains("<rect"), "the rewards chart is drawn");
    assert!(farm_dom.contains(&format!("/nodes/{live}")));
    assert_eq!(text_of(node_dom, "node-status"), "down");
    assert_eq!(text_of(node_dom, "node-cu"), "4.00");
    assert!(node_dom.contains("paid") && node_dom.contains("<polyline"));

    // Names are escaped, unknown pages are 404 and odd ids 400.
    let (s, _) = h.get("/farms/999").await;
    assert_eq!(s, 404);
    let (s, _) = h.get("/nodes/01").await;
    assert_eq!(s, 400);
}
