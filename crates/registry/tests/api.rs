//! The registry's API, scenario by scenario, on SQLite and on PostgreSQL.

// A failed unwrap, expect or assertion is a failed test: the workspace's deny of them is
// for product code.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ed25519_dalek::SigningKey;
use gridtypes::{Consumption, Envelope, Payload, Report, Resources, GIB};
use rand::rngs::OsRng;
use registry::Config;
use serde_json::{json, Value};
use test_infra::client::{error_code, node_registration, nonce, seal};
use test_infra::{now, Engine, Registry, Skipped};

test_infra::on_both_engines!(
    farmer_registers_twin_farm_and_node,
    node_reports_are_stored_verbatim_and_reverify,
    node_list_filters_and_pages,
    node_goes_down_when_reports_stop,
    node_stopped_in_order_is_not_up_at_once,
    malformed_json_is_refused,
    unknown_fields_are_refused,
    bad_signature_is_refused,
    unknown_signer_is_refused,
    unknown_farm_is_refused_and_keeps_the_nonce,
    stale_timestamps_are_refused,
    replayed_nonce_is_refused,
    oversized_body_is_refused,
    wrong_payload_kind_is_refused,
    bad_queries_get_json_errors,
    concurrent_reports_all_land,
    concurrent_replays_land_once,
    data_survives_a_restart,
);

async fn harness(engine: Engine) -> Result<Registry, Skipped> {
    Registry::start(engine).await
}

fn cap(cru: u64, mru_gib: f64, sru_gib: f64, hru_gib: f64) -> Resources {
    Resources::from_gib(cru, mru_gib, sru_gib, hru_gib)
}

async fn farmer_registers_twin_farm_and_node(engine: Engine) {
    let Ok(h) = harness(engine).await else {
        return;
    };
    let twin = SigningKey::generate(&mut OsRng);
    let (s, v) = h
        .post("/api/v1/twins", &seal(&twin, &Payload::RegisterTwin {}))
        .await;
    assert_eq!((s, v["created"].as_bool()), (201, Some(true)), "{v}");
    let twin_id = v["id"].as_i64().unwrap();
    // Registering again is idempotent.
    let (s, v) = h
        .post("/api/v1/twins", &seal(&twin, &Payload::RegisterTwin {}))
        .await;
    assert_eq!((s, v["id"].as_i64()), (200, Some(twin_id)), "{v}");

    let farm = Payload::CreateFarm {
        name: "solar-farm".into(),
    };
    let (s, v) = h.post("/api/v1/farms", &seal(&twin, &farm)).await;
    assert_eq!(s, 201, "{v}");
    let farm_id = v["id"].as_i64().unwrap();
    let (s, v) = h.post("/api/v1/farms", &seal(&twin, &farm)).await;
    assert_eq!((s, error_code(&v)), (409, "conflict"), "{v}");

    let node = SigningKey::generate(&mut OsRng);
    let (s, v) = h
        .post(
            "/api/v1/nodes",
            &seal(&node, &node_registration(farm_id, cap(2, 2.0, 20.0, 50.0))),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    let node_id = v["id"].as_i64().unwrap();
    // Re-registration with the same key updates, never duplicates.
    let (s, v) = h
        .post(
            "/api/v1/nodes",
            &seal(&node, &node_registration(farm_id, cap(4, 8.0, 100.0, 50.0))),
        )
        .await;
    assert_eq!((s, v["id"].as_i64()), (200, Some(node_id)), "{v}");

    let (s, v) = h.get("/api/v1/nodes").await;
    assert_eq!(s, 200);
    assert_eq!(v["items"].as_array().unwrap().len(), 1, "{v}");
    let (_, n) = h.get(&format!("/api/v1/nodes/{node_id}")).await;
    assert_eq!(n["capacity"]["cru"], 4);
    assert_eq!(n["capacity"]["mru"], 8 * GIB);
    assert_eq!(n["farm_id"], farm_id);
    assert_eq!(n["status"], "up");
    assert_eq!(n["virtualized"], true);
    assert_eq!(n["interfaces"][0]["name"], "eth0");
    let units = cap(4, 8.0, 100.0, 50.0).farming_units();
    assert_eq!(n["units"]["cu"].as_f64().unwrap(), units.cu);
    assert_eq!(n["units"]["su"].as_f64().unwrap(), units.su);

    let (_, f) = h.get(&format!("/api/v1/farms/{farm_id}")).await;
    assert_eq!(
        (
            f["name"].as_str(),
            f["twin_id"].as_i64(),
            f["nodes"].as_i64()
        ),
        (Some("solar-farm"), Some(twin_id), Some(1))
    );
    let (_, t) = h.get(&format!("/api/v1/twins/{twin_id}")).await;
    assert_eq!(
        t["public_key"],
        hex::encode(twin.verifying_key().as_bytes())
    );
    let (_, farms) = h.get("/api/v1/farms").await;
    assert_eq!(farms["items"].as_array().unwrap().len(), 1);

    let (_, st) = h.get("/api/v1/stats").await;
    assert_eq!(st["twins"], 1);
    assert_eq!(st["farms"], 1);
    assert_eq!(st["up"]["nodes"], 1);
    assert_eq!(st["all"]["capacity"]["sru"], 100 * GIB);
    assert_eq!(st["up"]["units"]["cu"].as_f64().unwrap(), units.cu);
}

async fn node_reports_are_stored_verbatim_and_reverify(engine: Engine) {
    let Ok(h) = harness(engine).await else {
        return;
    };
    let farm = h.farm("f").await;
    let (key, id) = h.node(farm, cap(8, 64.0, 1000.0, 0.0)).await;

    let (s, v) = h.report(&key, Report::uptime(120)).await;
    assert_eq!(s, 201, "{v}");
    let bigger = cap(8, 64.0, 1000.0, 4000.0);
    let (s, _) = h
        .report(
            &key,
            Report::Capacity {
                capacity: bigger,
                warnings: vec![],
            },
        )
        .await;
    assert_eq!(s, 201);
    let used = cap(2, 4.0, 100.0, 0.0);
    let (s, _) = h
        .report(
            &key,
            Report::Consumption(Consumption {
                used,
                traffic_bytes: 3 * GIB,
                contracts: Vec::new(),
            }),
        )
        .await;
    assert_eq!(s, 201);

    let (_, n) = h.get(&format!("/api/v1/nodes/{id}")).await;
    assert_eq!(n["uptime_secs"], 120);
    assert_eq!(n["capacity"]["hru"], 4000 * GIB);
    // Used is what the registry's contracts reserve (none here), not what the node claims;
    // the node's claim stays in its stored consumption report.
    assert_eq!(n["used"]["cru"], 0);
    assert_eq!(n["free"]["cru"], 8);
    assert_eq!(n["free"]["sru"], 1000 * GIB);
    assert_eq!(n["traffic_bytes"], 3 * GIB);
    assert_eq!(
        n["units"]["su"].as_f64().unwrap(),
        bigger.farming_units().su
    );
    let reports = n["reports"].as_array().unwrap();
    assert_eq!(reports.len(), 4, "three reports and the registration");
    assert_eq!(reports[0]["kind"], "consumption", "newest first");
    assert_eq!(reports[3]["kind"], "registration");
    // An auditor re-verifies every stored envelope without trusting the registry.
    for r in reports {
        let env: Envelope = serde_json::from_value(r["envelope"].clone()).unwrap();
        let signer = env.verify_signature().unwrap();
        assert_eq!(signer, key.verifying_key());
        assert_eq!(r["signed_at"], env.timestamp);
    }

    let (_, page) = h
        .get(&format!("/api/v1/nodes/{id}/reports?kind=uptime"))
        .await;
    let items = page["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "{page}");
    assert_eq!(items[0]["kind"], "uptime");
    let (_, page) = h.get(&format!("/api/v1/nodes/{id}/reports?limit=3")).await;
    assert_eq!(page["items"].as_array().unwrap().len(), 3);
    let next = page["next"].as_i64().unwrap();
    let (_, page) = h
        .get(&format!("/api/v1/nodes/{id}/reports?limit=3&after={next}"))
        .await;
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    assert!(page.get("next").is_none());
}

async fn node_list_filters_and_pages(engine: Engine) {
    let Ok(h) = harness(engine).await else {
        return;
    };
    let f1 = h.farm("one").await;
    let f2 = h.farm("two").await;
    let mut ids = vec![];
    for i in 1..=6u64 {
        let farm = if i % 2 == 0 { f2 } else { f1 };
        ids.push(
            h.node(
                farm,
                cap(i, 4.0 * i as f64, 100.0 * i as f64, 1000.0 * (i % 3) as f64),
            )
            .await
            .1,
        );
    }
    let count = |v: &Value| v["items"].as_array().unwrap().len();
    let (_, v) = h.get(&format!("/api/v1/nodes?farm={f2}")).await;
    assert_eq!(count(&v), 3);
    assert!(v["items"]
        .as_array()
        .unwrap()
        .iter()
        .all(|n| n["farm_id"] == f2));
    let (_, v) = h.get("/api/v1/nodes?min_cru=4").await;
    assert_eq!(count(&v), 3);
    let (_, v) = h
        .get(&format!(
            "/api/v1/nodes?min_mru={}&min_sru={}",
            8 * GIB,
            500 * GIB
        ))
        .await;
    assert_eq!(count(&v), 2);
    let (_, v) = h
        .get(&format!("/api/v1/nodes?min_hru={}", 2000 * GIB))
        .await;
    assert_eq!(count(&v), 2, "i = 2 and 5");
    let (_, v) = h
        .get(&format!("/api/v1/nodes?farm={f1}&min_cru=3&status=up"))
        .await;
    assert_eq!(count(&v), 2);
    let (_, v) = h.get("/api/v1/nodes?status=down").await;
    assert_eq!(count(&v), 0);
    // Paging walks every node exactly once.
    let mut seen = vec![];
    let mut after = 0;
    loop {
        let (_, v) = h.get(&format!("/api/v1/nodes?limit=4&after={after}")).await;
        seen.extend(
            v["items"]
                .as_array()
                .unwrap()
                .iter()
                .map(|n| n["id"].as_i64().unwrap()),
        );
        match v["next"].as_i64() {
            Some(n) => after = n,
            None => break,
        }
    }
    assert_eq!(seen, ids);
}

async fn node_goes_down_when_reports_stop(engine: Engine) {
    let config = Config {
        up_window_secs: 2,
        ..Config::default()
    };
    let Ok(h) = Registry::start_with(engine, config).await else {
        return;
    };
    let farm = h.farm("f").await;
    let (key, id) = h.node(farm, cap(1, 2.0, 60.0, 0.0)).await;
    let (_, v) = h.get("/api/v1/nodes?status=up").await;
    assert_eq!(v["items"][0]["id"], id);
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    let (_, v) = h.get("/api/v1/nodes?status=up").await;
    assert_eq!(v["items"].as_array().unwrap().len(), 0, "{v}");
    let (_, v) = h.get("/api/v1/nodes?status=down").await;
    assert_eq!(v["items"][0]["status"], "down");
    let (_, st) = h.get("/api/v1/stats").await;
    assert_eq!(
        (st["up"]["nodes"].as_i64(), st["all"]["nodes"].as_i64()),
        (Some(0), Some(1))
    );
    // A report brings it back up.
    let (s, _) = h.report(&key, Report::uptime(10)).await;
    assert_eq!(s, 201);
    let (_, v) = h.get(&format!("/api/v1/nodes/{id}")).await;
    assert_eq!(v["status"], "up");
}

async fn node_stopped_in_order_is_not_up_at_once(engine: Engine) {
    let Ok(h) = harness(engine).await else {
        return;
    };
    let farm = h.farm("f").await;
    let (key, id) = h.node(farm, cap(1, 2.0, 60.0, 0.0)).await;
    let (other, _) = h.node(farm, cap(1, 2.0, 60.0, 0.0)).await;
    let (s, _) = h.report(&other, Report::uptime(5)).await;
    assert_eq!(s, 201);
    // The agent's last report before an ordered shutdown.
    let last = Report::Uptime {
        uptime_secs: 100,
        stopping: true,
        warnings: vec![],
    };
    let (s, v) = h.report(&key, last).await;
    assert_eq!(s, 201, "{v}");
    let (_, v) = h.get(&format!("/api/v1/nodes/{id}")).await;
    assert_eq!(v["status"], "stopped", "{v}");
    assert_eq!(v["uptime_secs"], 100);
    let ids = |v: &Value| -> Vec<i64> {
        v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["id"].as_i64().unwrap())
            .collect()
    };
    let (_, up) = h.get("/api/v1/nodes?status=up").await;
    assert!(!ids(&up).contains(&id), "{up}");
    let (_, down) = h.get("/api/v1/nodes?status=down").await;
    assert_eq!(ids(&down), vec![id], "{down}");
    let (_, stopped) = h.get("/api/v1/nodes?status=stopped").await;
    assert_eq!(ids(&stopped), vec![id], "{stopped}");
    let (_, st) = h.get("/api/v1/stats").await;
    assert_eq!(
        (st["up"]["nodes"].as_i64(), st["all"]["nodes"].as_i64()),
        (Some(1), Some(2))
    );
    // The next boot's first message brings it back.
    let (s, _) = h.report(&key, Report::uptime(3)).await;
    assert_eq!(s, 201);
    let (_, v) = h.get(&format!("/api/v1/nodes/{id}")).await;
    assert_eq!(v["status"], "up");
}

async fn malformed_json_is_refused(engine: Engine) {
    let Ok(h) = harness(engine).await else {
        return;
    };
    let before = h.snapshot().await;
    for body in [
        &b"{"[..],
        b"",
        b"[1,2]",
        b"null",
        b"{\"signer\": 5}",
        &[0xff, 0x00, 0xfe],
    ] {
        for path in [
            "/api/v1/twins",
            "/api/v1/farms",
            "/api/v1/nodes",
            "/api/v1/reports",
        ] {
            let (s, v) = h.post_raw(path, body.to_vec()).await;
            assert_eq!(
                (s, error_code(&v)),
                (400, "malformed"),
                "{path} {body:?}: {v}"
            );
        }
    }
    // A valid envelope around a payload that is not JSON.
    let key = SigningKey::generate(&mut OsRng);
    let env = Envelope::seal_bytes(&key, b"{kind".to_vec(), now(), nonce());
    let (s, v) = h.post("/api/v1/twins", &env).await;
    assert_eq!((s, error_code(&v)), (400, "malformed"), "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("payload"),
        "{v}"
    );
    assert_eq!(h.snapshot().await, before);
}

async fn unknown_fields_are_refused(engine: Engine) {
    let Ok(h) = harness(engine).await else {
        return;
    };
    let farm = h.farm("f").await;
    let before = h.snapshot().await;
    let key = SigningKey::generate(&mut OsRng);
    // Unknown field in the envelope.
    let mut env: Value = serde_json::to_value(seal(&key, &Payload::RegisterTwin {})).unwrap();
    env["admin"] = json!(true);
    let (s, v) = h
        .post_raw("/api/v1/twins", serde_json::to_vec(&env).unwrap())
        .await;
    assert_eq!((s, error_code(&v)), (400, "malformed"), "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("admin"),
        "{v}"
    );
    // Unknown field inside a correctly signed payload.
    let payload = format!(
        r#"{{"kind":"register_node","farm_id":{farm},"capacity":{{"cru":1,"mru":1,"sru":1,"hru":1}},"owner":"me"}}"#
    );
    let env = Envelope::seal_bytes(&key, payload.into_bytes(), now(), nonce());
    let (s, v) = h.post("/api/v1/nodes", &env).await;
    assert_eq!((s, error_code(&v)), (400, "malformed"), "{v}");
    assert!(
        v["error"]["message"].as_str().unwrap().contains("owner"),
        "{v}"
    );
    assert_eq!(h.snapshot().await, before);
}

async fn bad_signature_is_refused(engine: Engine) {
    let Ok(h) = harness(engine).await else {
        return;
    };
    let farm = h.farm("f").await;
    let (key, _) = h.node(farm, cap(1, 2.0, 60.0, 0.0)).await;
    let before = h.snapshot().await;
    // Tampered payload.
    let mut env = seal(&key, &Payload::Report(Report::uptime(1)));
    env.payload = Payload::Report(Report::uptime(999_999)).to_bytes();
    let (s, v) = h.post("/api/v1/reports", &env).await;
    assert_eq!((s, error_code(&v)), (401, "bad_signature"), "{v}");
    // Signed by another key in the node's name.
    let thief = SigningKey::generate(&mut OsRng);
    let mut env = seal(&thief, &Payload::Report(Report::uptime(1)));
    env.signer = hex::encode(key.verifying_key().as_bytes());
    let (s, v) = h.post("/api/v1/reports", &env).await;
    assert_eq!((s, error_code(&v)), (401, "bad_signature"), "{v}");
    // Signer that is not hex at all.
    let mut env = seal(&thief, &Payload::RegisterTwin {});
    env.signer = "00".repeat(31) + "zz";
    let (s, v) = h.post("/api/v1/twins", &env).await;
    assert_eq!((s, error_code(&v)), (400, "malformed"), "{v}");
    // 32 bytes that are not a point on the curve.
    let not_a_point = (0u8..=255)
        .map(|b| [b; 32])
        .find(|b| ed25519_dalek::VerifyingKey::from_bytes(b).is_err())
        .unwrap();
    env.signer = hex::encode(not_a_point);
    let (s, v) = h.post("/api/v1/twins", &env).await;
    assert_eq!((s, error_code(&v)), (401, "bad_signature"), "{v}");
    assert_eq!(h.snapshot().await, before);
}

async fn unknown_signer_is_refused(engine: Engine) {
    let Ok(h) = harness(engine).await else {
        return;
    };
    let before = h.snapshot().await;
    let stranger = SigningKey::generate(&mut OsRng);
    let (s, v) = h.report(&stranger, Report::uptime(1)).await;
    assert_eq!((s, error_code(&v)), (401, "unknown_signer"), "{v}");
    let (s, v) = h
        .post(
            "/api/v1/farms",
            &seal(&stranger, &Payload::CreateFarm { name: "x".into() }),
        )
        .await;
    assert_eq!((s, error_code(&v)), (401, "unknown_signer"), "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("twin register"),
        "{v}"
    );
    assert_eq!(h.snapshot().await, before);
}

async fn unknown_farm_is_refused_and_keeps_the_nonce(engine: Engine) {
    let Ok(h) = harness(engine).await else {
        return;
    };
    let farm = h.farm("real").await;
    let before = h.snapshot().await;
    let key = SigningKey::generate(&mut OsRng);
    let n = nonce();
    let env = Envelope::seal(
        &key,
        &node_registration(farm + 100, cap(1, 2.0, 60.0, 0.0)),
        now(),
        n,
    );
    let (s, v) = h.post("/api/v1/nodes", &env).await;
    assert_eq!((s, error_code(&v)), (422, "unknown_farm"), "{v}");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains(&(farm + 100).to_string()));
    assert_eq!(h.snapshot().await, before);
    // The refused request did not consume its nonce: the same nonce works for a good request.
    let env = Envelope::seal(
        &key,
        &node_registration(farm, cap(1, 2.0, 60.0, 0.0)),
        now(),
        n,
    );
    let (s, v) = h.post("/api/v1/nodes", &env).await;
    assert_eq!(s, 201, "{v}");
}

async fn stale_timestamps_are_refused(engine: Engine) {
    let Ok(h) = harness(engine).await else {
        return;
    };
    let before = h.snapshot().await;
    let key = SigningKey::generate(&mut OsRng);
    for skew in [-400, 400, -86_400, i64::MAX / 2] {
        let env = Envelope::seal(&key, &Payload::RegisterTwin {}, now() + skew, nonce());
        let (s, v) = h.post("/api/v1/twins", &env).await;
        assert_eq!(
            (s, error_code(&v)),
            (401, "stale_timestamp"),
            "skew {skew}: {v}"
        );
    }
    assert_eq!(h.snapshot().await, before);
    // Within the window is fine.
    let env = Envelope::seal(&key, &Payload::RegisterTwin {}, now() - 200, nonce());
    assert_eq!(h.post("/api/v1/twins", &env).await.0, 201);
}

async fn replayed_nonce_is_refused(engine: Engine) {
    let Ok(h) = harness(engine).await else {
        return;
    };
    let farm = h.farm("f").await;
    let (key, id) = h.node(farm, cap(1, 2.0, 60.0, 0.0)).await;
    let env = seal(&key, &Payload::Report(Report::uptime(5)));
    assert_eq!(h.post("/api/v1/reports", &env).await.0, 201);
    let before = h.snapshot().await;
    let (s, v) = h.post("/api/v1/reports", &env).await;
    assert_eq!((s, error_code(&v)), (409, "replay"), "{v}");
    // Same nonce, new content, new signature: still a replay.
    let again = Envelope::seal(
        &key,
        &Payload::Report(Report::uptime(6)),
        env.timestamp,
        hex::decode(&env.nonce).unwrap().try_into().unwrap(),
    );
    let (s, v) = h.post("/api/v1/reports", &again).await;
    assert_eq!((s, error_code(&v)), (409, "replay"), "{v}");
    assert_eq!(h.snapshot().await, before);
    let (_, n) = h.get(&format!("/api/v1/nodes/{id}")).await;
    assert_eq!(n["uptime_secs"], 5);
}

async fn oversized_body_is_refused(engine: Engine) {
    let Ok(h) = harness(engine).await else {
        return;
    };
    let before = h.snapshot().await;
    let key = SigningKey::generate(&mut OsRng);
    let big = vec![b' '; h.config().body_limit + 1];
    let env = Envelope::seal_bytes(&key, big, now(), nonce());
    let (s, v) = h.post("/api/v1/twins", &env).await;
    assert_eq!((s, error_code(&v)), (413, "too_large"), "{v}");
    // Also when the body is not even JSON.
    let (s, v) = h
        .post_raw("/api/v1/reports", vec![b'x'; 2 * h.config().body_limit])
        .await;
    assert_eq!((s, error_code(&v)), (413, "too_large"), "{v}");
    assert_eq!(h.snapshot().await, before);
}

async fn wrong_payload_kind_is_refused(engine: Engine) {
    let Ok(h) = harness(engine).await else {
        return;
    };
    let before = h.snapshot().await;
    let key = SigningKey::generate(&mut OsRng);
    // A twin registration posted as a report.
    let (s, v) = h
        .post("/api/v1/reports", &seal(&key, &Payload::RegisterTwin {}))
        .await;
    assert_eq!((s, error_code(&v)), (400, "wrong_kind"), "{v}");
    assert_eq!(h.snapshot().await, before);
}

async fn bad_queries_get_json_errors(engine: Engine) {
    let Ok(h) = harness(engine).await else {
        return;
    };
    for (path, status, code) in [
        ("/api/v1/nodes?colour=red", 400, "malformed"),
        ("/api/v1/nodes?limit=0", 400, "malformed"),
        ("/api/v1/nodes?limit=100000", 400, "malformed"),
        ("/api/v1/nodes?min_cru=lots", 400, "malformed"),
        ("/api/v1/nodes?status=sideways", 400, "malformed"),
        ("/api/v1/nodes/abc", 400, "malformed"),
        ("/api/v1/nodes/-1", 400, "malformed"),
        ("/api/v1/nodes/42", 404, "not_found"),
        ("/api/v1/nodes/42/reports", 404, "not_found"),
        ("/api/v1/nodes/1/reports?kind=gossip", 400, "malformed"),
        ("/api/v1/farms/7", 404, "not_found"),
        ("/api/v1/twins/7", 404, "not_found"),
        ("/api/v1/twins?after=x", 400, "malformed"),
        ("/api/v2/anything", 404, "not_found"),
    ] {
        let (s, v) = h.get(path).await;
        assert_eq!((s, error_code(&v)), (status, code), "{path}: {v}");
    }
}

async fn concurrent_reports_all_land(engine: Engine) {
    let Ok(h) = harness(engine).await else {
        return;
    };
    let farm = h.farm("f").await;
    let mut nodes = vec![];
    for _ in 0..10 {
        nodes.push(h.node(farm, cap(2, 4.0, 100.0, 0.0)).await);
    }
    let h = std::sync::Arc::new(h);
    let mut tasks = vec![];
    for (key, _) in &nodes {
        for i in 0..30u64 {
            let h = h.clone();
            let env = seal(key, &Payload::Report(Report::uptime(i)));
            tasks.push(tokio::spawn(async move {
                let (s, v) = h.post("/api/v1/reports", &env).await;
                (s, v["id"].as_i64(), env.nonce)
            }));
        }
    }
    // Every answer names the id under which exactly that report was stored.
    let mut sent = std::collections::HashMap::new();
    for t in tasks {
        let (s, id, nonce) = t.await.unwrap();
        assert_eq!(s, 201);
        sent.insert(id.unwrap(), nonce);
    }
    let (_, st) = h.get("/api/v1/stats").await;
    assert_eq!(
        st["reports"],
        300 + 10,
        "300 uptime reports and 10 registrations"
    );
    for (_, id) in &nodes {
        let (_, page) = h
            .get(&format!(
                "/api/v1/nodes/{id}/reports?kind=uptime&limit=1000"
            ))
            .await;
        let items = page["items"].as_array().unwrap();
        assert_eq!(items.len(), 30);
        for r in items {
            let stored = r["envelope"]["nonce"].as_str().unwrap();
            let id = r["id"].as_i64().unwrap();
            assert_eq!(
                sent.get(&id).map(String::as_str),
                Some(stored),
                "report {id}; answered ids: {:?}",
                {
                    let mut k: Vec<_> = sent.keys().collect();
                    k.sort();
                    k
                }
            );
        }
    }
}

async fn data_survives_a_restart(engine: Engine) {
    let Ok(mut h) = harness(engine).await else {
        return;
    };
    let farm = h.farm("f").await;
    let (key, id) = h.node(farm, cap(2, 4.0, 100.0, 0.0)).await;
    let env = seal(&key, &Payload::Report(Report::uptime(77)));
    assert_eq!(h.post("/api/v1/reports", &env).await.0, 201);
    let before = h.snapshot().await;
    h.restart().await;
    assert_eq!(h.snapshot().await, before);
    let (_, n) = h.get(&format!("/api/v1/nodes/{id}")).await;
    assert_eq!(n["uptime_secs"], 77);
    // Replay protection survives the restart too.
    let (s, v) = h.post("/api/v1/reports", &env).await;
    assert_eq!((s, error_code(&v)), (409, "replay"), "{v}");
}

async fn concurrent_replays_land_once(engine: Engine) {
    let Ok(h) = harness(engine).await else {
        return;
    };
    let farm = h.farm("f").await;
    let (key, id) = h.node(farm, cap(2, 4.0, 100.0, 0.0)).await;
    let h = std::sync::Arc::new(h);
    // The same signed report sent 40 times at once: the writer may see copies in one batch.
    let env = seal(&key, &Payload::Report(Report::uptime(3)));
    let tasks: Vec<_> = (0..40)
        .map(|_| {
            let (h, env) = (h.clone(), env.clone());
            tokio::spawn(async move { h.post("/api/v1/reports", &env).await })
        })
        .collect();
    let mut created = 0;
    for t in tasks {
        let (s, v) = t.await.unwrap();
        match s {
            201 => created += 1,
            409 => assert_eq!(error_code(&v), "replay"),
            other => panic!("unexpected {other}: {v}"),
        }
    }
    assert_eq!(created, 1);
    let (_, page) = h
        .get(&format!("/api/v1/nodes/{id}/reports?kind=uptime"))
        .await;
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
}
