//! `/metrics` in the Prometheus text format: what was ingested and refused, and the grid's
//! nodes, capacity and units, on SQLite and on PostgreSQL.

// A failed unwrap, expect or assertion is a failed test: the workspace's deny of them is
// for product code.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use gridtypes::{Report, Resources, GIB};
use test_infra::{seal, Engine, Registry};

test_infra::on_both_engines!(metrics_count_what_was_ingested_and_refused);

/// The value of the sample `name{labels}` in an exposition.
fn sample(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no {series} in\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

async fn scrape(h: &Registry) -> String {
    let r = h
        .http()
        .get(format!("{}/metrics", h.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let ct = r.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
    let text = r.text().await.unwrap();
    assert!(text.ends_with("# EOF\n"), "{text}");
    text
}

async fn metrics_count_what_was_ingested_and_refused(engine: Engine) {
    let Ok(h) = Registry::start(engine).await else {
        return;
    };
    let farm = h.farm("metered").await;
    let capacity = Resources {
        cru: 8,
        mru: 33 * GIB,
        sru: 1000 * GIB,
        hru: 2400 * GIB,
        ipv4: 2,
    };
    let (key, _) = h.node(farm, capacity).await;
    let env = seal(&key, &gridtypes::Payload::Report(Report::uptime(100)));
    assert_eq!(h.post("/api/v1/reports", &env).await.0, 201);
    // The same envelope again is a replay; a flipped signature byte is a forgery.
    assert_eq!(h.post("/api/v1/reports", &env).await.0, 409);
    let mut forged = env.clone();
    let mut sig = forged.signature.into_bytes();
    sig[0] = if sig[0] == b'a' { b'b' } else { b'a' };
    forged.signature = String::from_utf8(sig).unwrap();
    assert_eq!(h.post("/api/v1/reports", &forged).await.0, 401);

    let text = scrape(&h).await;
    assert_eq!(
        sample(&text, "grid_messages_ingested_total{kind=\"uptime\"}"),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            "grid_messages_ingested_total{kind=\"register_node\"}"
        ),
        1.0
    );
    assert_eq!(
        sample(&text, "grid_requests_rejected_total{reason=\"replay\"}"),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            "grid_requests_rejected_total{reason=\"bad_signature\"}"
        ),
        1.0
    );
    assert_eq!(sample(&text, "grid_nodes{scope=\"all\"}"), 1.0);
    assert_eq!(sample(&text, "grid_nodes{scope=\"up\"}"), 1.0);
    assert_eq!(
        sample(&text, "grid_capacity{scope=\"up\",resource=\"cru\"}"),
        8.0
    );
    assert_eq!(
        sample(&text, "grid_capacity{scope=\"all\",resource=\"hru_bytes\"}"),
        (2400 * GIB) as f64
    );
    assert_eq!(
        sample(&text, "grid_units{scope=\"up\",resource=\"cu\"}"),
        8.0
    );
    assert_eq!(
        sample(&text, "grid_units{scope=\"up\",resource=\"su\"}"),
        6.0
    );
    assert_eq!(sample(&text, "grid_farms"), 1.0);
    // A 404 is an answer with a code too.
    let _ = h.get("/api/v1/nodes/999").await;
    let text = scrape(&h).await;
    assert_eq!(
        sample(&text, "grid_requests_rejected_total{reason=\"not_found\"}"),
        1.0
    );
}
