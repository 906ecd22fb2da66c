//! A client that talks to a registry as nodes and twins do: envelopes sealed with
//! `gridtypes`' own [`Envelope::seal`] (fresh nonce, this machine's clock), posted as JSON,
//! answers read as status and JSON.

use ed25519_dalek::SigningKey;
use gridtypes::{Envelope, NodeRegistration, Payload, Report, Resources, NONCE_LEN};
use rand::rngs::OsRng;
use rand::RngCore;
use serde_json::Value;

/// A fresh random nonce.
pub fn nonce() -> [u8; NONCE_LEN] {
    let mut n = [0u8; NONCE_LEN];
    OsRng.fill_bytes(&mut n);
    n
}

/// `payload` sealed by `key` now, with a fresh nonce.
pub fn seal(key: &SigningKey, payload: &Payload) -> Envelope {
    Envelope::seal(key, payload, gridtypes::now(), nonce())
}

/// A new random key (a node's or a twin's).
pub fn new_key() -> SigningKey {
    SigningKey::generate(&mut OsRng)
}

/// A node registration as a QEMU guest with one NIC would send it.
pub fn node_registration(farm: i64, capacity: Resources) -> Payload {
    Payload::RegisterNode(NodeRegistration {
        farm_id: farm as u64,
        capacity,
        serial: Some("QEMU-0001".into()),
        virtualized: true,
        interfaces: vec![gridtypes::Interface {
            name: "eth0".into(),
            mac: Some("52:54:00:12:34:56".into()),
            ips: vec!["10.0.2.15/24".into()],
        }],
        agent_version: Some("test".into()),
        box_key: None,
        warnings: Vec::new(),
    })
}

/// The registry's `error.code` in an answer body, `<none>` when there is none.
pub fn error_code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("<none>")
}

/// Sends a request; the status and the body as JSON (or as a JSON string when it is not JSON).
/// Panics when there is no answer at all: the tests using it expect one.
pub async fn send(req: reqwest::RequestBuilder) -> (u16, Value) {
    let r = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("no answer: {e}"));
    let status = r.status().as_u16();
    let text = r
        .text()
        .await
        .unwrap_or_else(|e| panic!("reading the answer: {e}"));
    let v = serde_json::from_str(&text).unwrap_or(Value::String(text));
    (status, v)
}

/// HTTP to one registry, with the requests a node, a twin or an auditor makes.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    http: reqwest::Client,
}

impl Client {
    /// A client of the registry at `base` (`http://ADDR`).
    pub fn new(base: impl Into<String>) -> Client {
        Client {
            base: base.into(),
            http: reqwest::Client::new(),
        }
    }

    /// The registry's base URL, `http://ADDR`.
    pub fn url(&self) -> &str {
        &self.base
    }

    /// The HTTP client, for requests the helpers do not cover (raw headers, streaming).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// GET `path`.
    pub async fn get(&self, path: &str) -> (u16, Value) {
        send(self.http.get(format!("{}{path}", self.base))).await
    }

    /// POST `body` to `path` as `application/json`, whatever the bytes are.
    pub async fn post_raw(&self, path: &str, body: Vec<u8>) -> (u16, Value) {
        send(
            self.http
                .post(format!("{}{path}", self.base))
                .header("content-type", "application/json")
                .body(body),
        )
        .await
    }

    /// POST an envelope to `path`.
    pub async fn post(&self, path: &str, env: &Envelope) -> (u16, Value) {
        self.post_raw(path, env.to_json()).await
    }

    /// Seals `payload` with `key` now and POSTs it to `path`.
    pub async fn signed(&self, path: &str, key: &SigningKey, payload: &Payload) -> (u16, Value) {
        self.post(path, &seal(key, payload)).await
    }

    /// Registers a fresh twin; its key and id.
    pub async fn twin(&self) -> (SigningKey, i64) {
        let key = new_key();
        let (s, v) = self
            .signed("/api/v1/twins", &key, &Payload::RegisterTwin {})
            .await;
        assert_eq!(s, 201, "twin registration: {v}");
        (key, id(&v))
    }

    /// Registers a fresh twin and a farm `name` it owns; the farm id.
    pub async fn farm(&self, name: &str) -> i64 {
        let (key, _) = self.twin().await;
        let (s, v) = self
            .signed(
                "/api/v1/farms",
                &key,
                &Payload::CreateFarm { name: name.into() },
            )
            .await;
        assert_eq!(s, 201, "farm creation: {v}");
        id(&v)
    }

    /// Registers a fresh node in `farm` ([`node_registration`], with the box key of its
    /// identity key as an agent publishes it); its key and id.
    pub async fn node(&self, farm: i64, capacity: Resources) -> (SigningKey, i64) {
        let key = new_key();
        let mut reg = node_registration(farm, capacity);
        if let Payload::RegisterNode(r) = &mut reg {
            r.box_key = Some(gridtypes::mailbox::box_key_hex(
                &gridtypes::mailbox::box_public(&key.verifying_key()),
            ));
        }
        let (s, v) = self.signed("/api/v1/nodes", &key, &reg).await;
        assert_eq!(s, 201, "node registration: {v}");
        (key, id(&v))
    }

    /// Sends `report` signed by the node `key`.
    pub async fn report(&self, key: &SigningKey, report: Report) -> (u16, Value) {
        self.signed("/api/v1/reports", key, &Payload::Report(report))
            .await
    }

    /// Counts of everything the registry stores (twins, farms, reports, nodes, capacity),
    /// to compare before and after a request that must change nothing.
    pub async fn snapshot(&self) -> Value {
        let (s, stats) = self.get("/api/v1/stats").await;
        assert_eq!(s, 200, "{stats}");
        serde_json::json!({
            "twins": stats["twins"], "farms": stats["farms"], "reports": stats["reports"],
            "nodes": stats["all"]["nodes"], "capacity": stats["all"]["capacity"],
        })
    }
}

fn id(v: &Value) -> i64 {
    v["id"].as_i64().unwrap_or_else(|| panic!("no id in {v}"))
}
