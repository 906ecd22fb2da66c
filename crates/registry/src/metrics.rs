//! Prometheus metrics at `/metrics`: what this replica ingested and refused (counters kept
//! in memory, as Prometheus expects of each process), and the grid's figures read from the
//! database at each scrape (nodes, capacity, units), in the OpenMetrics text format.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use gridapi::ErrorCode;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::api::AppState;
use crate::error::ApiError;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Kind {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Scope {
    scope: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Resource {
    scope: &'static str,
    resource: &'static str,
}

type FloatGauge = Gauge<f64, AtomicU64>;

/// The registry's metrics.
pub struct Metrics {
    registry: Registry,
    ingested: Family<Kind, Counter>,
    rejected: Family<Reason, Counter>,
    nodes: Family<Scope, Gauge>,
    capacity: Family<Resource, FloatGauge>,
    units: Family<Resource, FloatGauge>,
    twins: Gauge,
    farms: Gauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("grid");
        let m = Metrics {
            ingested: Family::default(),
            rejected: Family::default(),
            nodes: Family::default(),
            capacity: Family::default(),
            units: Family::default(),
            twins: Gauge::default(),
            farms: Gauge::default(),
            registry: Registry::default(),
        };
        registry.register(
            "messages_ingested",
            "Signed messages this replica stored, by kind",
            m.ingested.clone(),
        );
        registry.register(
            "requests_rejected",
            "Requests this replica refused, by error code",
            m.rejected.clone(),
        );
        registry.register(
            "nodes",
            "Nodes registered (scope=all) and up (scope=up)",
            m.nodes.clone(),
        );
        registry.register(
            "capacity",
            "Raw capacity of all or of up nodes: cores, and bytes of memory, SSD and HDD, and public IPv4 addresses",
            m.capacity.clone(),
        );
        registry.register(
            "units",
            "Farming units (CU, SU) of all or of up nodes",
            m.units.clone(),
        );
        registry.register("twins", "Twins in the phonebook", m.twins.clone());
        registry.register("farms", "Farms", m.farms.clone());
        Metrics { registry, ..m }
    }
}

impl Metrics {
    /// Counts a stored signed message of `kind`.
    pub fn ingested(&self, kind: &'static str) {
        self.ingested.get_or_create(&Kind { kind }).inc();
    }

    /// Counts a refused request.
    pub fn rejected(&self, code: ErrorCode) {
        self.rejected
            .get_or_create(&Reason {
                reason: code.as_str(),
            })
            .inc();
    }
}

/// Counts every answer that carries an error code (set by [`ApiError`]'s response).
pub async fn count_rejections(
    State(s): State<Arc<AppState>>,
    req: Request,
    next: Next,
) -> Response {
    let response = next.run(req).await;
    if let Some(code) = response.extensions().get::<ErrorCode>() {
        s.metrics.rejected(*code);
    }
    response
}

/// `GET /metrics`.
pub async fn get_metrics(State(s): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let m = &s.metrics;
    let up_since = gridtypes::now() - s.config.up_window_secs;
    let (all, up) = crate::api::grid_totals(&s.db, up_since).await?;
    for (scope, t) in [("all", all), ("up", up)] {
        m.nodes.get_or_create(&Scope { scope }).set(t.nodes);
        for (resource, v) in [
            ("cru", t.capacity.cru),
            ("mru_bytes", t.capacity.mru),
            ("sru_bytes", t.capacity.sru),
            ("hru_bytes", t.capacity.hru),
            ("ipv4", t.capacity.ipv4),
        ] {
            m.capacity
                .get_or_create(&Resource { scope, resource })
                .set(v as f64);
        }
        for (resource, v) in [("cu", t.units.cu), ("su", t.units.su)] {
            m.units.get_or_create(&Resource { scope, resource }).set(v);
        }
    }
    m.twins.set(crate::api::count(&s.db, "twins").await?);
    m.farms.set(crate::api::count(&s.db, "farms").await?);
    let mut body = String::new();
    prometheus_client::encoding::text::encode(&mut body, &m.registry)
        .map_err(|_| ApiError::Unavailable("encoding the metrics failed".into()))?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response())
}
