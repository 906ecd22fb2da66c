//! The registry attacked as a hostile client would: other spellings of the same bytes, extreme
//! numbers, floods, slow and idle clients, huge reads. Each attack asserts the status and
//! code, that the server still answers, and that nothing stored changed. SQLite and
//! PostgreSQL both; the file-descriptor attack runs the real binary under a low limit.

// A failed unwrap, expect or assertion is a failed test: the workspace's deny of them is
// for product code.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use gridtypes::{
    Consumption, Envelope, Payload, Report, Resources, MAX_DISK, MAX_TRAFFIC_BYTES, NONCE_LEN,
};
use rand::rngs::OsRng;
use registry::{Config, Rate, RateLimits};
use serde_json::Value;
use test_infra::client::{node_registration, nonce, seal, send};
use test_infra::{now, Engine, Registry, RegistryCommand, Skipped};

test_infra::on_both_engines!(
    recased_nonce_is_not_a_new_message,
    recased_signer_clones_no_node_and_no_twin,
    numbers_beyond_physical_bounds_are_refused,
    traffic_totals_saturate_and_rows_stay_readable,
    stats_sum_any_number_of_maximal_nodes,
    extreme_timestamps_are_stale,
    padded_payloads_are_refused,
    reads_are_bounded_whatever_was_stored,
    new_identities_are_rate_limited_per_address,
    keys_are_rate_limited_after_verification,
    one_key_one_role,
    writes_must_be_json,
    full_write_queue_answers_busy,
    farm_names_are_unique_in_any_case,
    ids_have_one_spelling,
    duplicate_json_fields_are_refused,
    idle_and_slow_clients_are_dropped,
);

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("")
}

async fn harness(engine: Engine) -> Result<Registry, Skipped> {
    Registry::start(engine).await
}

fn cap(cru: u64) -> Resources {
    Resources::from_gib(cru, 4.0, 100.0, 0.0)
}

/// What an attack may not change: the counts, the capacity and every node's last message.
async fn state(h: &Registry) -> Value {
    let mut snap = h.snapshot().await;
    let (s, nodes) = h.get("/api/v1/nodes?limit=1000").await;
    assert_eq!(s, 200, "{nodes}");
    let seen: Vec<Value> = nodes["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            serde_json::json!([
                n["id"],
                n["last_seen"],
                n["uptime_secs"],
                n["traffic_bytes"]
            ])
        })
        .collect();
    snap["nodes_seen"] = Value::Array(seen);
    snap
}

/// The attack got `status`/`code`, the server still answers, and nothing changed.
async fn refused(h: &Registry, got: (u16, Value), status: u16, want: &str, before: &Value) {
    assert_eq!((got.0, code(&got.1)), (status, want), "{}", got.1);
    let (s, _) = h.get("/healthz").await;
    assert_eq!(s, 200, "server stopped answering");
    assert_eq!(
        &state(h).await,
        before,
        "a refused request changed stored state"
    );
}

/// Upper-cases the `n`th letter of a hex string.
fn recase(hex: &str, n: usize) -> String {
    let mut b = hex.as_bytes().to_vec();
    if let Some(i) = (0..b.len()).filter(|i| b[*i].is_ascii_alphabetic()).nth(n) {
        b[i] = b[i].to_ascii_uppercase();
    }
    String::from_utf8(b).unwrap()
}

/// A node's stored messages, as anyone can read them.
async fn stored(h: &Registry, node: i64) -> Vec<Envelope> {
    let (s, v) = h
        .get(&format!("/api/v1/nodes/{node}/reports?limit=1000"))
        .await;
    assert_eq!(s, 200, "{v}");
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| serde_json::from_value(r["envelope"].clone()).unwrap())
        .collect()
}

async fn recased_nonce_is_not_a_new_message(engine: Engine) {
    let Ok(h) = harness(engine).await else {
        return;
    };
    let farm = h.farm("f").await;
    let (key, node) = h.node(farm, cap(2)).await;
    let (s, v) = h.report(&key, Report::uptime(60)).await;
    assert_eq!(s, 201, "{v}");
    let envs = stored(&h, node).await;
    let report = envs.last().unwrap().clone();
    // The letter-rich nonce of a fresh report: every single-letter re-casing is refused.
    let before = state(&h).await;
    let letters = report.nonce.bytes().filter(u8::is_ascii_alphabetic).count();
    for i in 0..letters {
        let mut e = report.clone();
        e.nonce = recase(&report.nonce, i);
        refused(
            &h,
            h.post("/api/v1/reports", &e).await,
            400,
            "malformed",
            &before,
        )
        .await;
    }
    let mut e = report.clone();
    e.nonce = report.nonce.to_uppercase();
    refused(
        &h,
        h.post("/api/v1/reports", &e).await,
        400,
        "malformed",
        &before,
    )
    .await;
    // The exact bytes again are a replay.
    refused(
        &h,
        h.post("/api/v1/reports", &report).await,
        409,
        "replay",
        &before,
    )
    .await;
    // Signature spelled in capitals: same bytes, refused too.
    let mut e = report.clone();
    e.signature = report.signature.to_uppercase();
    refused(
        &h,
        h.post("/api/v1/reports", &e).await,
        400,
        "malformed",
        &before,
    )
    .await;
}

async fn recased_signer_clones_no_node_and_no_twin(engine: Engine) {
    let Ok(h) = harness(engine).await else {
        return;
    };
    let farm = h.farm("f").await;
    let (_, node) = h.node(farm, cap(4)).await;
    // The node's public registration, fresh, replayed under other spellings of its key.
    let registration = stored(&h, node).await.remove(0);
    let before = state(&h).await;
    for i in 0..4 {
        let mut e = registration.clone();
        e.signer = recase(&registration.signer, i);
        refused(
            &h,
            h.post("/api/v1/nodes", &e).await,
            400,
            "malformed",
            &before,
        )
        .await;
    }
    // The same for a twin's registration.
    let twin = SigningKey::generate(&mut OsRng);
    let env = seal(&twin, &Payload::RegisterTwin {});
    let (s, v) = h.post("/api/v1/twins", &env).await;
    assert_eq!(s, 201, "{v}");
    let before = state(&h).await;
    let mut e = env.clone();
    e.signer = env.signer.to_uppercase();
    refused(
        &h,
        h.post("/api/v1/twins", &e).await,
        400,
        "malformed",
        &before,
    )
    .await;
    let (_, twins) = h.get("/api/v1/twins").await;
    let same_key = twins["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| {
            t["public_key"]
                .as_str()
                .unwrap()
                .eq_ignore_ascii_case(&env.signer)
        })
        .count();
    assert_eq!(same_key, 1);
}

async fn numbers_beyond_physical_bounds_are_refused(engine: Engine) {
    let Ok(h) = harness(engine).await else {
        return;
    };
    let farm = h.farm("f").await;
    let (key, _) = h.node(farm, cap(2)).await;
    let before = state(&h).await;
    let huge = Resources {
        cru: i64::MAX as u64,
        ..cap(2)
    };
    let fresh = SigningKey::generate(&mut OsRng);
    let got = h
        .post(
            "/api/v1/nodes",
            &seal(&fresh, &node_registration(farm, huge)),
        )
        .await;
    refused(&h, got, 400, "malformed", &before).await;
    for report in [
        Report::Capacity {
            capacity: huge,
            warnings: vec![],
        },
        Report::Capacity {
            capacity: Resources {
                sru: MAX_DISK + 1,
                ..cap(2)
            },
            warnings: vec![],
        },
        Report::Consumption(Consumption {
            used: Resources::default(),
            traffic_bytes: i64::MAX as u64,
            contracts: Vec::new(),
        }),
        Report::Consumption(Consumption {
            used: Resources::default(),
            traffic_bytes: MAX_TRAFFIC_BYTES + 1,
            contracts: Vec::new(),
        }),
        Report::uptime(u64::MAX),
        Report::uptime(i64::MAX as u64),
    ] {
        refused(&h, h.report(&key, report).await, 400, "malformed", &before).await;
    }
    // Numbers JSON cannot hold as u64 are malformed too.
    let raw = br#"{"kind":"report","report":"uptime","uptime_secs":1e300}"#.to_vec();
    let env = Envelope::seal_bytes(&key, raw, now(), nonce());
    refused(
        &h,
        h.post("/api/v1/reports", &env).await,
        400,
        "malformed",
        &before,
    )
    .await;
    let raw = br#"{"kind":"report","report":"uptime","uptime_secs":-1}"#.to_vec();
    let env = Envelope::seal_bytes(&key, raw, now(), nonce());
    refused(
        &h,
        h.post("/api/v1/reports", &env).await,
        400,
        "malformed",
        &before,
    )
    .await;
}

async fn traffic_totals_saturate_and_rows_stay_readable(engine: Engine) {
    let Ok(h) = harness(engine).await else {
        return;
    };
    let farm = h.farm("f").await;
    let (key, node) = h.node(farm, cap(2)).await;
    let consumption = |t| {
        Report::Consumption(Consumption {
            used: Resources::default(),
            traffic_bytes: t,
            contracts: Vec::new(),
        })
    };
    for _ in 0..2 {
        let (s, v) = h.report(&key, consumption(MAX_TRAFFIC_BYTES)).await;
        assert_eq!(s, 201, "{v}");
    }
    // A total an older registry could have reached: one more report must not wrap it or
    // turn the column into a REAL.
    h.sql(&format!(
        "UPDATE nodes SET traffic_bytes = {} WHERE id = {node}",
        i64::MAX - 10
    ))
    .await;
    for _ in 0..2 {
        let (s, v) = h.report(&key, consumption(MAX_TRAFFIC_BYTES)).await;
        assert_eq!(s, 201, "{v}");
    }
    let (s, v) = h.get(&format!("/api/v1/nodes/{node}")).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["traffic_bytes"].as_i64(), Some(i64::MAX));
    let (s, v) = h.get("/api/v1/nodes").await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = h.get("/api/v1/stats").await;
    assert_eq!(s, 200, "{v}");
}

async fn stats_sum_any_number_of_maximal_nodes(engine: Engine) {
    let Ok(h) = harness(engine).await else {
        return;
    };
    let farm = h.farm("f").await;
    let max = Resources {
        cru: gridtypes::MAX_CRU,
        mru: gridtypes::MAX_MRU,
        sru: MAX_DISK,
        hru: MAX_DISK,
        ipv4: gridtypes::MAX_IPV4,
    };
    let mut ids = vec![];
    for _ in 0..3 {
        ids.push(h.node(farm, max).await.1);
    }
    let (s, v) = h.get("/api/v1/stats").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["all"]["capacity"]["sru"].as_u64(), Some(3 * MAX_DISK));
    assert_eq!(
        v["all"]["capacity"]["cru"].as_u64(),
        Some(3 * gridtypes::MAX_CRU)
    );
    // Rows as large as a column holds (what a registry before the bounds stored): the
    // grid-wide sum passes 2^64 and is still exact, not a 500.
    h.sql(&format!(
        "UPDATE nodes SET cru = {m}, sru = {m}, hru = {m}",
        m = i64::MAX
    ))
    .await;
    let (s, v) = h.get("/api/v1/stats").await;
    assert_eq!(s, 200, "{v}");
    let sum = v["all"]["capacity"]["sru"].as_f64().unwrap();
    let exact = 3.0 * i64::MAX as f64;
    assert!((sum - exact).abs() / exact < 1e-12, "{sum} vs {exact}");
    assert!(sum > u64::MAX as f64);
}

async fn extreme_timestamps_are_stale(engine: Engine) {
    let Ok(h) = harness(engine).await else {
        return;
    };
    let farm = h.farm("f").await;
    let (key, _) = h.node(farm, cap(2)).await;
    let before = state(&h).await;
    // Well outside the window: the exact ±300 s edge is gridtypes' unit test, since a second
    // can pass between sealing here and checking in the server.
    for ts in [
        i64::MIN,
        i64::MIN + 1,
        i64::MAX,
        -1,
        0,
        now() - 400,
        now() + 400,
    ] {
        let env = Envelope::seal(&key, &Payload::Report(Report::uptime(5)), ts, nonce());
        refused(
            &h,
            h.post("/api/v1/reports", &env).await,
            401,
            "stale_timestamp",
            &before,
        )
        .await;
    }
}

async fn padded_payloads_are_refused(engine: Engine) {
    let Ok(h) = harness(engine).await else {
        return;
    };
    let farm = h.farm("f").await;
    let (key, _) = h.node(farm, cap(2)).await;
    let before = state(&h).await;
    // An uptime report padded with 47 KB of JSON whitespace: valid JSON, validly signed.
    let mut raw = Payload::Report(Report::uptime(5)).to_bytes();
    raw.splice(1..1, std::iter::repeat_n(b' ', 47_000));
    let env = Envelope::seal_bytes(&key, raw, now(), nonce());
    refused(
        &h,
        h.post("/api/v1/reports", &env).await,
        413,
        "too_large",
        &before,
    )
    .await;
    // A twin registration padded the same way.
    let twin = SigningKey::generate(&mut OsRng);
    let mut raw = br#"{"kind":"register_twin"}"#.to_vec();
    raw.splice(1..1, std::iter::repeat_n(b'\n', 10_000));
    let env = Envelope::seal_bytes(&twin, raw, now(), nonce());
    refused(
        &h,
        h.post("/api/v1/twins", &env).await,
        413,
        "too_large",
        &before,
    )
    .await;
    // A body over the server's limit.
    let got = h.post_raw("/api/v1/twins", vec![b' '; 70 * 1024]).await;
    refused(&h, got, 413, "too_large", &before).await;
}

async fn reads_are_bounded_whatever_was_stored(engine: Engine) {
    let Ok(h) = harness(engine).await else {
        return;
    };
    let farm = h.farm("f").await;
    let (key, node) = h.node(farm, cap(2)).await;
    let (s, _) = h.report(&key, Report::uptime(1)).await;
    assert_eq!(s, 201);
    // 60 reports of 100 KB each, planted as a registry without per-kind limits stored them.
    let big = format!("{{\"pad\":\"{}\"}}", "x".repeat(100_000));
    let hex = hex_literal(engine, big.as_bytes());
    h.sql(&format!(
        "INSERT INTO reports (node_id, kind, signed_at, received_at, nonce, envelope) \
         SELECT node_id, kind, signed_at, received_at, nonce, {hex} FROM reports WHERE node_id = {node}"
    ))
    .await;
    for _ in 0..5 {
        h.sql(&format!(
            "INSERT INTO reports (node_id, kind, signed_at, received_at, nonce, envelope) \
             SELECT node_id, kind, signed_at, received_at, nonce, envelope FROM reports \
             WHERE node_id = {node} AND id > 2"
        ))
        .await;
    }
    let mut after = 0;
    let mut seen = 0;
    let mut pages = 0;
    loop {
        let url = format!(
            "{}/api/v1/nodes/{node}/reports?limit=1000&after={after}",
            h.url()
        );
        let body = h
            .http()
            .get(url)
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert!(
            body.len() <= registry::api::PAGE_BYTES + 200_000,
            "a page of {} bytes",
            body.len()
        );
        let v: Value = serde_json::from_slice(&body).unwrap();
        seen += v["items"].as_array().unwrap().len();
        pages += 1;
        match v["next"].as_i64() {
            Some(n) => after = n,
            None => break,
        }
    }
    let (_, stats) = h.get("/api/v1/stats").await;
    assert_eq!(
        seen as i64,
        stats["reports"].as_i64().unwrap(),
        "paging lost reports"
    );
    assert!(pages > 1, "everything came in one page");
    let (s, _) = h.get(&format!("/api/v1/nodes/{node}")).await;
    assert_eq!(s, 200);
}

/// A blob literal for either engine.
fn hex_literal(engine: Engine, bytes: &[u8]) -> String {
    match engine {
        Engine::Sqlite => format!("X'{}'", hex::encode(bytes)),
        Engine::Postgres => format!("'\\x{}'::bytea", hex::encode(bytes)),
    }
}

async fn new_identities_are_rate_limited_per_address(engine: Engine) {
    let Ok(h) = harness(engine).await else {
        return;
    };
    let burst = RateLimits::default().new_identities_per_ip.burst as usize;
    // Fresh keys as fast as one client can send them: the burst passes, then 429.
    for sent in 0..burst + 20 {
        let before = state(&h).await;
        let fresh = SigningKey::generate(&mut OsRng);
        let r = h
            .http()
            .post(format!("{}/api/v1/twins", h.url()))
            .header("content-type", "application/json")
            .body(seal(&fresh, &Payload::RegisterTwin {}).to_json())
            .send()
            .await
            .unwrap();
        if r.status().as_u16() == 201 {
            continue;
        }
        assert!(
            sent >= burst,
            "limited after {sent} twins, burst is {burst}"
        );
        let retry: u64 = r.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(retry >= 1, "Retry-After {retry}");
        let got = (r.status().as_u16(), r.json::<Value>().await.unwrap());
        refused(&h, got, 429, "rate_limited", &before).await;
        return;
    }
    panic!(
        "{} twin registrations from one address, none limited",
        burst + 20
    );
}

async fn keys_are_rate_limited_after_verification(engine: Engine) {
    let config = Config {
        rate: RateLimits {
            per_key: Rate {
                burst: 5,
                per_minute: 1,
            },
            ..RateLimits::default()
        },
        ..Config::default()
    };
    let Ok(h) = Registry::start_with(engine, config).await else {
        return;
    };
    let farm = h.farm("f").await;
    let key = SigningKey::generate(&mut OsRng);
    // Forgeries in the victim's name do not spend its quota.
    let thief = SigningKey::generate(&mut OsRng);
    for _ in 0..10 {
        let mut env = seal(&thief, &Payload::Report(Report::uptime(1)));
        env.signer = hex::encode(key.verifying_key().as_bytes());
        let (s, _) = h.post("/api/v1/reports", &env).await;
        assert_eq!(s, 401);
    }
    let (s, v) = h
        .post(
            "/api/v1/nodes",
            &seal(&key, &node_registration(farm, cap(1))),
        )
        .await;
    assert_eq!(s, 201, "{v}");
    for i in 0..4 {
        let (s, v) = h.report(&key, Report::uptime(i)).await;
        assert_eq!(s, 201, "{v}");
    }
    let before = state(&h).await;
    let got = h.report(&key, Report::uptime(9)).await;
    refused(&h, got, 429, "rate_limited", &before).await;
    // Another key is not affected.
    let (other, _) = h.node(farm, cap(1)).await;
    let (s, _) = h.report(&other, Report::uptime(1)).await;
    assert_eq!(s, 201);
}

async fn one_key_one_role(engine: Engine) {
    let Ok(h) = harness(engine).await else {
        return;
    };
    let farm = h.farm("f").await;
    let (twin, _) = h.twin().await;
    let (node, _) = h.node(farm, cap(1)).await;
    let before = state(&h).await;
    let got = h
        .post(
            "/api/v1/nodes",
            &seal(&twin, &node_registration(farm, cap(1))),
        )
        .await;
    refused(&h, got, 409, "role_conflict", &before).await;
    let got = h
        .post("/api/v1/twins", &seal(&node, &Payload::RegisterTwin {}))
        .await;
    refused(&h, got, 409, "role_conflict", &before).await;
    // A node key cannot create a farm either (it is not a twin).
    let got = h
        .post(
            "/api/v1/farms",
            &seal(&node, &Payload::CreateFarm { name: "x".into() }),
        )
        .await;
    refused(&h, got, 401, "unknown_signer", &before).await;
}

async fn writes_must_be_json(engine: Engine) {
    let Ok(h) = harness(engine).await else {
        return;
    };
    let before = state(&h).await;
    let key = SigningKey::generate(&mut OsRng);
    for ct in [
        None,
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("application/jsonx"),
    ] {
        let mut req = h
            .http()
            .post(format!("{}/api/v1/twins", h.url()))
            .body(seal(&key, &Payload::RegisterTwin {}).to_json());
        if let Some(ct) = ct {
            req = req.header("content-type", ct);
        }
        let got = send(req).await;
        refused(&h, got, 415, "unsupported_media_type", &before).await;
    }
    let req = h
        .http()
        .post(format!("{}/api/v1/twins", h.url()))
        .header("content-type", "Application/JSON; charset=utf-8")
        .body(seal(&key, &Payload::RegisterTwin {}).to_json());
    assert_eq!(send(req).await.0, 201);
}

async fn full_write_queue_answers_busy(engine: Engine) {
    // A queue smaller than one envelope: every write finds it full.
    let config = Config {
        write_queue_bytes: 64,
        ..Config::default()
    };
    let Ok(h) = Registry::start_with(engine, config).await else {
        return;
    };
    let before = state(&h).await;
    let key = SigningKey::generate(&mut OsRng);
    let r = h
        .http()
        .post(format!("{}/api/v1/twins", h.url()))
        .header("content-type", "application/json")
        .body(seal(&key, &Payload::RegisterTwin {}).to_json())
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["retry-after"], "1");
    let got = (r.status().as_u16(), r.json::<Value>().await.unwrap());
    refused(&h, got, 503, "busy", &before).await;
}

async fn farm_names_are_unique_in_any_case(engine: Engine) {
    let Ok(h) = harness(engine).await else {
        return;
    };
    h.farm("acme").await;
    let (twin, _) = h.twin().await;
    let before = state(&h).await;
    let got = h
        .post(
            "/api/v1/farms",
            &seal(
                &twin,
                &Payload::CreateFarm {
                    name: "ACME".into(),
                },
            ),
        )
        .await;
    refused(&h, got, 409, "conflict", &before).await;
}

async fn ids_have_one_spelling(engine: Engine) {
    let Ok(h) = harness(engine).await else {
        return;
    };
    let farm = h.farm("f").await;
    let (_, node) = h.node(farm, cap(1)).await;
    assert_eq!(h.get(&format!("/api/v1/nodes/{node}")).await.0, 200);
    for bad in [
        format!("0{node}"),
        format!("+{node}"),
        format!("{node}.0"),
        "-1".into(),
        "99999999999999999999".into(),
    ] {
        let (s, v) = h.get(&format!("/api/v1/nodes/{bad}")).await;
        assert_eq!((s, code(&v)), (400, "malformed"), "{bad}: {v}");
    }
}

async fn duplicate_json_fields_are_refused(engine: Engine) {
    let Ok(h) = harness(engine).await else {
        return;
    };
    let farm = h.farm("f").await;
    let (key, _) = h.node(farm, cap(1)).await;
    let before = state(&h).await;
    let env = seal(&key, &Payload::Report(Report::uptime(1)));
    let json = String::from_utf8(env.to_json()).unwrap();
    let other = hex::encode([9u8; NONCE_LEN]);
    let dup = json.replacen('{', &format!("{{\"nonce\":\"{other}\","), 1);
    let got = h.post_raw("/api/v1/reports", dup.into_bytes()).await;
    refused(&h, got, 400, "malformed", &before).await;
}

/// Waits until the server closes `s` (EOF or reset) and returns what it sent before.
fn read_to_close(mut s: TcpStream) -> (String, Duration) {
    let t = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    (String::from_utf8_lossy(&out).into_owned(), t.elapsed())
}

async fn idle_and_slow_clients_are_dropped(engine: Engine) {
    let config = Config {
        header_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(8),
        request_timeout: Duration::from_secs(2),
        max_connections: 32,
        ..Config::default()
    };
    let Ok(h) = Registry::start_with(engine, config).await else {
        return;
    };
    let before = state(&h).await;
    let addr = h.addr();
    let base = h.url();
    let outcome = tokio::task::spawn_blocking(move || {
        let open = || {
            let s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
            s
        };
        // 1. A slowloris (one header line at a time, never the end of the head) next to an
        //    idle keep-alive connection: the head deadline closes the first long before the
        //    idle timeout closes the second.
        let idle = open();
        let mut slow = open();
        slow.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
        slow.write_all(b"GET /healthz HTTP/1.1\r\n").unwrap();
        let t = Instant::now();
        let mut slow_closed = None;
        while t.elapsed() < Duration::from_secs(15) {
            let mut b = [0u8; 64];
            let gone = slow.write_all(b"X-a: b\r\n").is_err()
                || match slow.read(&mut b) {
                    Ok(0) => true,
                    Ok(_) => false,
                    Err(e) => !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
                };
            if gone {
                slow_closed = Some(t.elapsed());
                break;
            }
        }
        idle.set_nonblocking(true).unwrap();
        let mut b = [0u8; 1];
        let idle_open_then = matches!(
            (&idle).read(&mut b),
            Err(ref e) if e.kind() == std::io::ErrorKind::WouldBlock
        );
        idle.set_nonblocking(false).unwrap();
        let (_, idle_life) = read_to_close(idle);
        // 2. A body that never finishes.
        let mut body = open();
        body.write_all(
            b"POST /api/v1/reports HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{\"sig",
        )
        .unwrap();
        let (answer, _) = read_to_close(body);
        // 3. More idle connections than the server serves at once: every one is closed by
        //    the server, none kept forever.
        let flood: Vec<TcpStream> = (0..70).map(|_| open()).collect();
        let closed = flood
            .into_iter()
            .map(read_to_close)
            .filter(|(_, d)| *d < Duration::from_secs(59))
            .count();
        (slow_closed, idle_open_then, idle_life, answer, closed)
    })
    .await
    .unwrap();
    let (slow_closed, idle_open_then, idle_life, answer, closed) = outcome;
    let slow_closed = slow_closed.expect("slowloris connection still open after 15 s");
    assert!(
        slow_closed < Duration::from_secs(6),
        "slowloris lived {slow_closed:?}: the idle timeout closed it, not the head deadline"
    );
    assert!(
        idle_open_then,
        "an idle connection was closed by the head deadline"
    );
    assert!(
        idle_life < Duration::from_secs(59),
        "idle connection never closed"
    );
    assert!(
        answer.starts_with("HTTP/1.1 408"),
        "unfinished body got {answer:?}"
    );
    assert!(answer.contains("\"timeout\""), "{answer}");
    assert_eq!(closed, 70, "idle connections left open");
    let (s, _) = send(h.http().get(format!("{base}/healthz"))).await;
    assert_eq!(s, 200);
    assert_eq!(state(&h).await, before);
}

/// Clients that ask for a large download (an extension image) and then read nothing, as many
/// as the server has connections: each is ended once it took no byte for the idle timeout,
/// so the server answers others again within seconds, and what the stalled ones got is cut
/// short. A client that reads slowly but steadily is not one of them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_downloads_do_not_hold_the_server() {
    const IMAGE: usize = 64 << 20;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("vm.sqfs"), vec![0x5au8; IMAGE]).unwrap();
    let config = Config {
        header_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(2),
        max_connections: 4,
        extensions: Some(dir.path().to_path_buf()),
        ..Config::default()
    };
    let h = Registry::start_with(Engine::Sqlite, config).await.unwrap();
    let addr = h.addr();
    let (answered, waited, got, slow_got) = tokio::task::spawn_blocking(move || {
        let ask = || {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(b"GET /api/v1/extensions/vm/image HTTP/1.1\r\nHost: x\r\n\r\n")
                .unwrap();
            s
        };
        let stalled: Vec<TcpStream> = (0..4).map(|_| ask()).collect();
        // Let the server fill the sockets' buffers.
        std::thread::sleep(Duration::from_millis(500));
        let t = Instant::now();
        let mut probe = TcpStream::connect(addr).unwrap();
        probe
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        probe
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut answer = String::new();
        let _ = probe.read_to_string(&mut answer);
        let waited = t.elapsed();
        // Three idle timeouts after they stalled: every one has been cut by now, even on a
        // busy machine where the server filled their buffers late.
        std::thread::sleep(Duration::from_secs(6).saturating_sub(waited));
        let got: Vec<usize> = stalled
            .into_iter()
            .map(|mut s| {
                s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
                let mut n = 0;
                let mut buf = vec![0u8; 1 << 16];
                while let Ok(k) = s.read(&mut buf) {
                    if k == 0 {
                        break;
                    }
                    n += k;
                }
                n
            })
            .collect();
        // A slow reader: 64 KiB every 100 ms, never idle for the whole timeout.
        let mut slow = ask();
        slow.set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        let mut buf = vec![0u8; 1 << 16];
        let mut slow_got = 0;
        let mut alive = true;
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(5) {
            match slow.read(&mut buf) {
                Ok(0) | Err(_) => {
                    alive = false;
                    break;
                }
                Ok(k) => slow_got += k,
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        (answer, waited, got, (slow_got, alive))
    })
    .await
    .unwrap();
    assert!(answered.starts_with("HTTP/1.1 200"), "{answered:?}");
    assert!(
        waited < Duration::from_secs(10),
        "healthz waited {waited:?} behind stalled downloads"
    );
    for n in got {
        assert!(n < IMAGE, "a stalled download was not cut: {n} bytes");
    }
    // Five seconds of reading a little at a time: still being served, not cut at 2 s.
    let (slow_got, alive) = slow_got;
    assert!(
        alive && slow_got > 0,
        "a slow but steady reader was cut after {slow_got} bytes"
    );
}

/// The real binary under a 256-descriptor limit, flooded with 600 idle connections: it keeps
/// its descriptors for the database and answers `/healthz` once the idle ones ahead of it
/// time out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn descriptor_flood_does_not_starve_the_server() {
    let Ok(_) = test_infra::require_tool("prlimit") else {
        return;
    };
    // The flood needs 600 descriptors on this side too: lift the soft limit to the hard one,
    // as the registry itself does (a machine's default soft limit may be 1,024).
    registry::server::connection_capacity();
    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("registry.log");
    let mut reg = RegistryCommand::new(env!("CARGO_BIN_EXE_grid-registry"))
        .wrapper(["prlimit", "--nofile=256:256", "--"])
        .args(["--header-timeout", "1", "--idle-timeout", "2"])
        .log(&log_path)
        .start()
        .await
        .unwrap();
    let addr = reg.addr();
    let healthz = |timeout: Duration| -> bool {
        let Ok(mut s) = TcpStream::connect(addr) else {
            return false;
        };
        s.set_read_timeout(Some(timeout)).unwrap();
        if s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .is_err()
        {
            return false;
        }
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out.starts_with("HTTP/1.1 200")
    };
    assert!(healthz(Duration::from_secs(1)), "registry not answering");
    let flood: Vec<TcpStream> = (0..600)
        .filter_map(|_| TcpStream::connect(addr).ok())
        .collect();
    assert!(
        flood.len() >= 256,
        "only {} connections opened",
        flood.len()
    );
    // Served within the header timeout of the idle connections ahead of it, not never.
    assert!(
        healthz(Duration::from_secs(30)),
        "healthz not answered under the flood"
    );
    drop(flood);
    assert!(healthz(Duration::from_secs(5)));
    assert_eq!(reg.exited(), None, "registry exited");
    reg.kill();
    // The server saw the limit and sized itself to it (256 - its reserve), instead of
    // failing accept() with EMFILE.
    let log = std::fs::read_to_string(&log_path).unwrap();
    assert!(log.contains("max_connections=128"), "{log}");
}
