//! The JSON API under `/api/v1`: signed writes from twins and nodes, open reads for auditors.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{to_bytes, Body};
use axum::extract::{FromRequestParts, Path, State};
use axum::handler::Handler;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::TryStreamExt;
use gridapi::paths;
pub use gridapi::{
    ContractFilter, ContractState, ContractView, FarmView, LogsView, MailboxItem, MailboxPage,
    NodeFilter, NodeStatus, NodeView, Page, Paging, ReportFilter, ReportView, Stats, StatusView,
    StoredKind, Totals, TwinView, Written,
};
use gridtypes::{now, Envelope, Payload, ResourceTotals, Units, Verified};
use serde::de::DeserializeOwned;
use serde_json::value::RawValue;
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::db::{resources, Db};
use crate::error::ApiError;
use crate::limits::{ip_layer, KeyLimiter};
use crate::writer::Writer;
use crate::Config;

/// Default page size of list endpoints.
pub const DEFAULT_LIMIT: i64 = 50;
/// Largest page a client may ask for.
pub const MAX_LIMIT: i64 = 1000;
/// Reports shown inline with one node.
const INLINE_REPORTS: i64 = 20;
/// Stored bytes one page of reports or nodes may carry; a page stops early (with `next`)
/// when it is reached, so a read costs at most this much whatever was stored before
/// per-kind limits existed. A page always holds at least one item.
pub const PAGE_BYTES: usize = 1 << 20;

/// Shared state of all handlers.
#[derive(Debug)]
pub struct AppState {
    /// The database.
    pub db: Db,
    /// The single writer.
    pub writer: Writer,
    /// Per-key write limits.
    pub keys: KeyLimiter,
    /// Server settings.
    pub config: Config,
    /// Boot media builds in progress.
    pub boot_builds: crate::boot::Builds,
    /// Prometheus metrics.
    pub metrics: crate::metrics::Metrics,
}

type AppResult<T> = Result<T, ApiError>;
type S = State<Arc<AppState>>;

/// Builds the API router.
pub fn router(state: Arc<AppState>) -> Router {
    let rate = state.config.rate;
    let new_identities = ip_layer(rate.new_identities_per_ip, "new twins and farms");
    Router::new()
        .route(
            paths::TWINS,
            post(register_twin.layer(new_identities.clone())).get(list_twins),
        )
        .route(&format!("{}/{{id}}", paths::TWINS), get(get_twin))
        .route(
            paths::FARMS,
            post(create_farm.layer(new_identities)).get(list_farms),
        )
        .route(&format!("{}/{{id}}", paths::FARMS), get(get_farm))
        .route(paths::NODES, post(register_node).get(list_nodes))
        .route(&format!("{}/{{id}}", paths::NODES), get(get_node))
        .route(
            &format!("{}/{{id}}/reports", paths::NODES),
            get(list_reports),
        )
        .route(paths::REPORTS, post(post_report))
        .route(paths::CONTRACTS, post(create_contract).get(list_contracts))
        .route(paths::CONTRACTS_CANCEL, post(cancel_contract))
        .route(&format!("{}/{{id}}", paths::CONTRACTS), get(get_contract))
        .route(
            &format!("{}/{{id}}/status", paths::CONTRACTS),
            get(get_status),
        )
        .route(&format!("{}/{{id}}/logs", paths::CONTRACTS), get(get_logs))
        .route(paths::MAILBOX, post(post_deployment))
        .route(paths::MAILBOX_POLL, post(poll_mailbox))
        .route(paths::MAILBOX_STATUS, post(post_status))
        .route(paths::MAILBOX_LOG_REQUEST, post(post_log_request))
        .route(paths::MAILBOX_LOGS, post(post_logs))
        .route(paths::STATS, get(stats))
        .route("/boot/{farm}/{item}", get(crate::boot::get_boot))
        .route(
            &format!("{}/{{name}}", paths::EXTENSIONS),
            get(crate::extensions::get_manifest),
        )
        .route(
            &format!("{}/{{name}}/image", paths::EXTENSIONS),
            get(crate::extensions::get_image),
        )
        .route("/healthz", get(|| async { "ok" }))
        .merge(crate::ledger_api::routes())
        .route("/metrics", get(crate::metrics::get_metrics))
        .merge(crate::web::routes())
        .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
        // Every write, whatever its kind: counted per client address before any work.
        .layer(ip_layer(rate.per_ip, "writes"))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::metrics::count_rejections,
        ))
        .with_state(state)
}

/// Refuses a write whose body is not declared as JSON (`application/json`, any parameters).
fn require_json(headers: &HeaderMap) -> AppResult<()> {
    let ct = headers
        .get(header::CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or("(not text)"));
    let essence = ct.map(|c| c.split(';').next().unwrap_or("").trim());
    match essence {
        Some(e) if e.eq_ignore_ascii_case("application/json") => Ok(()),
        _ => Err(ApiError::UnsupportedMediaType(format!(
            "writes must be sent with Content-Type: application/json, got {}",
            ct.map_or("none".to_string(), |c| format!("{c:?}"))
        ))),
    }
}

/// Reads, verifies and kind-checks a signed request body, then charges the signer's quota.
async fn open_signed(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
    expected: &'static str,
) -> AppResult<(Verified, Vec<u8>)> {
    require_json(headers)?;
    let limit = state.config.body_limit;
    let bytes = to_bytes(body, limit)
        .await
        .map_err(|_| ApiError::TooLarge { limit })?;
    let envelope = Envelope::from_json(&bytes)?;
    let verified = envelope.open(now())?;
    let got = verified.payload.kind();
    if got != expected {
        return Err(ApiError::WrongKind { expected, got });
    }
    // Only a verified signature spends a key's quota: a forger cannot starve a real node.
    state.keys.check(verified.signer.as_bytes())?;
    Ok((verified, bytes.to_vec()))
}

async fn signed_write(
    state: &AppState,
    headers: &HeaderMap,
    body: Body,
    kind: &'static str,
) -> AppResult<(StatusCode, Json<Written>)> {
    let (verified, raw) = open_signed(state, headers, body, kind).await?;
    let stored = match &verified.payload {
        Payload::Report(r) => r.kind().as_str(),
        other => other.kind(),
    };
    let written = state.writer.write(verified, raw).await?;
    state.metrics.ingested(stored);
    let status = if written.created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(written)))
}

async fn register_twin(
    State(s): S,
    headers: HeaderMap,
    body: Body,
) -> AppResult<(StatusCode, Json<Written>)> {
    signed_write(&s, &headers, body, "register_twin").await
}

async fn create_farm(
    State(s): S,
    headers: HeaderMap,
    body: Body,
) -> AppResult<(StatusCode, Json<Written>)> {
    signed_write(&s, &headers, body, "create_farm").await
}

async fn register_node(
    State(s): S,
    headers: HeaderMap,
    body: Body,
) -> AppResult<(StatusCode, Json<Written>)> {
    signed_write(&s, &headers, body, "register_node").await
}

async fn create_contract(
    State(s): S,
    headers: HeaderMap,
    body: Body,
) -> AppResult<(StatusCode, Json<Written>)> {
    signed_write(&s, &headers, body, "create_contract").await
}

async fn cancel_contract(
    State(s): S,
    headers: HeaderMap,
    body: Body,
) -> AppResult<(StatusCode, Json<Written>)> {
    signed_write(&s, &headers, body, "cancel_contract").await
}

async fn post_report(
    State(s): S,
    headers: HeaderMap,
    body: Body,
) -> AppResult<(StatusCode, Json<Written>)> {
    signed_write(&s, &headers, body, "report").await
}

/// Query string extractor that answers bad or unknown parameters with a JSON error.
pub struct Q<T>(pub T);

impl<T: DeserializeOwned, St: Send + Sync> FromRequestParts<St> for Q<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &St) -> Result<Self, Self::Rejection> {
        parse_query(&parts.uri).map(Q)
    }
}

/// Reads a request's query string into `T` as [`Q`] does; public so the fuzz tests
/// (crates/fuzz) reach the parser without a server.
pub fn parse_query<T: DeserializeOwned>(uri: &Uri) -> AppResult<T> {
    axum::extract::Query::<T>::try_from_uri(uri)
        .map(|q| q.0)
        .map_err(|e| ApiError::Malformed(e.body_text()))
}

/// Parses an id in its one spelling (decimal digits, no sign, no leading zero), so one
/// resource has one URL. Public for the fuzz tests (crates/fuzz).
pub fn parse_id(raw: &str, what: &str) -> AppResult<i64> {
    let canonical =
        !raw.is_empty() && !raw.starts_with('0') && raw.bytes().all(|b| b.is_ascii_digit());
    canonical
        .then(|| raw.parse::<i64>().ok())
        .flatten()
        .ok_or_else(|| ApiError::Malformed(format!("{what} id {raw:?} is not a positive integer")))
}

/// Runs `q` and collects up to `limit` rows, stopping early once the rows' sizes (as `size`
/// reckons them) pass [`PAGE_BYTES`]; the page's `next` cursor then continues after them.
async fn bounded_page<'q, T>(
    db: &Db,
    q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments<'q>>,
    limit: i64,
    view: impl Fn(&AnyRow) -> Result<T, sqlx::Error>,
    size: impl Fn(&T) -> usize,
    id: impl Fn(&T) -> i64,
) -> AppResult<Page<T>> {
    let mut rows = q.fetch(&db.pool);
    let mut items = Vec::new();
    let mut bytes = 0usize;
    let mut full = false;
    while let Some(row) = rows.try_next().await? {
        let item = view(&row)?;
        bytes += size(&item);
        items.push(item);
        if bytes >= PAGE_BYTES && (items.len() as i64) < limit {
            full = true;
            break;
        }
    }
    drop(rows);
    let mut page = page(items, limit, &id);
    if full {
        page.next = page.items.last().map(&id);
    }
    Ok(page)
}

/// The page size a list asks for: [`DEFAULT_LIMIT`] when absent, refused outside
/// 1..=[`MAX_LIMIT`]. Public for the fuzz tests (crates/fuzz).
pub fn page_limit(limit: Option<i64>) -> AppResult<i64> {
    match limit {
        None => Ok(DEFAULT_LIMIT),
        Some(l) if (1..=MAX_LIMIT).contains(&l) => Ok(l),
        Some(l) => Err(ApiError::Malformed(format!(
            "limit {l} is out of range 1..={MAX_LIMIT}"
        ))),
    }
}

fn page<T>(items: Vec<T>, limit: i64, id: impl Fn(&T) -> i64) -> Page<T> {
    let next = if items.len() as i64 == limit {
        items.last().map(id)
    } else {
        None
    };
    Page { items, next }
}

// ---- twins ----

fn twin_view(r: &AnyRow) -> Result<TwinView, sqlx::Error> {
    Ok(TwinView {
        id: r.try_get("id")?,
        public_key: r.try_get("public_key")?,
        created_at: r.try_get("created_at")?,
    })
}

async fn list_twins(State(s): S, Q(p): Q<Paging>) -> AppResult<Json<Page<TwinView>>> {
    let limit = page_limit(p.limit)?;
    let rows = sqlx::query(
        "SELECT id, public_key, created_at FROM twins WHERE id > $1 ORDER BY id LIMIT $2",
    )
    .bind(p.after.unwrap_or(0))
    .bind(limit)
    .fetch_all(&s.db.pool)
    .await?;
    let items = rows.iter().map(twin_view).collect::<Result<Vec<_>, _>>()?;
    Ok(Json(page(items, limit, |t| t.id)))
}

async fn get_twin(State(s): S, Path(id): Path<String>) -> AppResult<Json<TwinView>> {
    let id = parse_id(&id, "twin")?;
    let row = sqlx::query("SELECT id, public_key, created_at FROM twins WHERE id = $1")
        .bind(id)
        .fetch_optional(&s.db.pool)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("twin {id} does not exist")))?;
    Ok(Json(twin_view(&row)?))
}

// ---- farms ----

const FARM_SELECT: &str = "SELECT f.id, f.name, f.twin_id, f.created_at, \
    (SELECT COUNT(*) FROM nodes n WHERE n.farm_id = f.id) AS nodes FROM farms f";

fn farm_view(r: &AnyRow) -> Result<FarmView, sqlx::Error> {
    Ok(FarmView {
        id: r.try_get("id")?,
        name: r.try_get("name")?,
        twin_id: r.try_get("twin_id")?,
        nodes: r.try_get("nodes")?,
        created_at: r.try_get("created_at")?,
    })
}

async fn list_farms(State(s): S, Q(p): Q<Paging>) -> AppResult<Json<Page<FarmView>>> {
    let limit = page_limit(p.limit)?;
    let rows = sqlx::query(&format!(
        "{FARM_SELECT} WHERE f.id > $1 ORDER BY f.id LIMIT $2"
    ))
    .bind(p.after.unwrap_or(0))
    .bind(limit)
    .fetch_all(&s.db.pool)
    .await?;
    let items = rows.iter().map(farm_view).collect::<Result<Vec<_>, _>>()?;
    Ok(Json(page(items, limit, |f| f.id)))
}

async fn get_farm(State(s): S, Path(id): Path<String>) -> AppResult<Json<FarmView>> {
    let id = parse_id(&id, "farm")?;
    let row = sqlx::query(&format!("{FARM_SELECT} WHERE f.id = $1"))
        .bind(id)
        .fetch_optional(&s.db.pool)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("farm {id} does not exist")))?;
    Ok(Json(farm_view(&row)?))
}

// ---- nodes ----

pub(crate) const NODE_COLUMNS: &str = "id, public_key, farm_id, serial, virtualized, interfaces, \
    agent_version, box_key, cru, mru, sru, hru, ipv4, used_cru, used_mru, used_sru, used_hru, used_ipv4, \
    cu, su, uptime_secs, traffic_bytes, registered_at, updated_at, last_seen, stopping";

pub(crate) fn node_view(r: &AnyRow, up_since: i64) -> Result<NodeView, sqlx::Error> {
    let capacity = resources(r, "")?;
    let used = resources(r, "used_")?;
    let last_seen: i64 = r.try_get("last_seen")?;
    let interfaces: String = r.try_get("interfaces")?;
    Ok(NodeView {
        id: r.try_get("id")?,
        public_key: r.try_get("public_key")?,
        farm_id: r.try_get("farm_id")?,
        status: if r.try_get::<i64, _>("stopping")? != 0 {
            NodeStatus::Stopped
        } else if last_seen >= up_since {
            NodeStatus::Up
        } else {
            NodeStatus::Down
        },
        serial: r.try_get("serial")?,
        virtualized: r.try_get::<i64, _>("virtualized")? != 0,
        // Written by the registry from a validated registration; `null` if it ever is not JSON.
        interfaces: RawValue::from_string(interfaces)
            .or_else(|_| RawValue::from_string("null".into()))
            .map_err(|e| sqlx::Error::Decode(e.into()))?,
        agent_version: r.try_get("agent_version")?,
        box_key: r.try_get("box_key")?,
        capacity,
        used,
        free: capacity.saturating_sub(&used),
        units: Units {
            cu: r.try_get("cu")?,
            su: r.try_get("su")?,
        },
        uptime_secs: r.try_get("uptime_secs")?,
        traffic_bytes: r.try_get("traffic_bytes")?,
        registered_at: r.try_get("registered_at")?,
        updated_at: r.try_get("updated_at")?,
        last_seen,
        reports: None,
    })
}

async fn list_nodes(State(s): S, Q(f): Q<NodeFilter>) -> AppResult<Json<Page<NodeView>>> {
    let limit = page_limit(f.limit)?;
    let up_since = now() - s.config.up_window_secs;
    let mut sql = format!("SELECT {NODE_COLUMNS} FROM nodes WHERE id > $1");
    let mut args: Vec<i64> = vec![f.after.unwrap_or(0)];
    // `cond` has one `?` where the argument's placeholder goes.
    let mut push = |cond: &str, v: i64| {
        args.push(v);
        sql.push_str(" AND ");
        sql.push_str(&cond.replace('?', &format!("${}", args.len())));
    };
    if let Some(farm) = f.farm {
        push("farm_id = ?", farm);
    }
    match f.status {
        Some(NodeStatus::Up) => push("last_seen >= ? AND stopping = 0", up_since),
        Some(NodeStatus::Down) => push("(last_seen < ? OR stopping = 1)", up_since),
        Some(NodeStatus::Stopped) => push("stopping = ?", 1),
        None => {}
    }
    for (col, v) in [
        ("free_cru", f.min_cru),
        ("free_mru", f.min_mru),
        ("free_sru", f.min_sru),
        ("free_hru", f.min_hru),
    ] {
        if let Some(v) = v {
            push(&format!("{col} >= ?"), v);
        }
    }
    args.push(limit);
    sql.push_str(&format!(" ORDER BY id LIMIT ${}", args.len()));
    let mut q = sqlx::query(&sql);
    for a in args {
        q = q.bind(a);
    }
    let page = bounded_page(
        &s.db,
        q,
        limit,
        |r| node_view(r, up_since),
        node_size,
        |n| n.id,
    )
    .await?;
    Ok(Json(page))
}

/// What a node costs in a response: its free-text fields and a fixed part for the numbers.
fn node_size(n: &NodeView) -> usize {
    512 + n.interfaces.get().len()
        + n.serial.as_ref().map_or(0, String::len)
        + n.agent_version.as_ref().map_or(0, String::len)
}

async fn get_node(State(s): S, Path(id): Path<String>) -> AppResult<Json<NodeView>> {
    let id = parse_id(&id, "node")?;
    let up_since = now() - s.config.up_window_secs;
    let row = sqlx::query(&format!("SELECT {NODE_COLUMNS} FROM nodes WHERE id = $1"))
        .bind(id)
        .fetch_optional(&s.db.pool)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("node {id} does not exist")))?;
    let mut node = node_view(&row, up_since)?;
    let rows = sqlx::query(&format!(
        "SELECT {REPORT_COLUMNS} FROM reports WHERE node_id = $1 ORDER BY id DESC LIMIT $2"
    ))
    .bind(id)
    .bind(INLINE_REPORTS)
    .fetch_all(&s.db.pool)
    .await?;
    node.reports = Some(rows.iter().map(report_view).collect::<Result<_, _>>()?);
    Ok(Json(node))
}

// ---- reports ----

const REPORT_COLUMNS: &str = "id, kind, signed_at, received_at, envelope";

fn report_view(r: &AnyRow) -> Result<ReportView, sqlx::Error> {
    let raw: Vec<u8> = r.try_get("envelope")?;
    let envelope = String::from_utf8(raw)
        .ok()
        .and_then(|s| RawValue::from_string(s).ok())
        .ok_or_else(|| sqlx::Error::Decode("stored envelope is not JSON".into()))?;
    Ok(ReportView {
        id: r.try_get("id")?,
        kind: r.try_get("kind")?,
        signed_at: r.try_get("signed_at")?,
        received_at: r.try_get("received_at")?,
        envelope,
    })
}

async fn list_reports(
    State(s): S,
    Path(id): Path<String>,
    Q(f): Q<ReportFilter>,
) -> AppResult<Json<Page<ReportView>>> {
    let id = parse_id(&id, "node")?;
    let limit = page_limit(f.limit)?;
    let exists = sqlx::query("SELECT id FROM nodes WHERE id = $1")
        .bind(id)
        .fetch_optional(&s.db.pool)
        .await?;
    if exists.is_none() {
        return Err(ApiError::NotFound(format!("node {id} does not exist")));
    }
    let kind_filter = if f.kind.is_some() {
        " AND kind = $4"
    } else {
        ""
    };
    let sql = format!(
        "SELECT {REPORT_COLUMNS} FROM reports WHERE node_id = $1 AND id > $2{kind_filter} \
         ORDER BY id LIMIT $3"
    );
    let mut q = sqlx::query(&sql)
        .bind(id)
        .bind(f.after.unwrap_or(0))
        .bind(limit);
    if let Some(kind) = f.kind {
        q = q.bind(kind.as_str());
    }
    let page = bounded_page(
        &s.db,
        q,
        limit,
        report_view,
        |r| 128 + r.envelope.get().len(),
        |r| r.id,
    )
    .await?;
    Ok(Json(page))
}

// ---- contracts ----

const CONTRACT_COLUMNS: &str = "id, twin_id, node_id, cru, mru, sru, hru, ipv4, state, \
    created_at, cancelled_at, deployment_version, status_version, log_request_id, billed_until, \
    grace_since";

fn contract_state(r: &AnyRow) -> Result<ContractState, sqlx::Error> {
    r.try_get::<String, _>("state")?
        .parse()
        .map_err(|e: String| sqlx::Error::Decode(e.into()))
}

fn contract_view(r: &AnyRow, grace_secs: i64) -> Result<ContractView, sqlx::Error> {
    let state = contract_state(r)?;
    let grace_since: Option<i64> = r.try_get("grace_since")?;
    Ok(ContractView {
        id: r.try_get("id")?,
        twin_id: r.try_get("twin_id")?,
        node_id: r.try_get("node_id")?,
        resources: resources(r, "")?,
        state,
        created_at: r.try_get("created_at")?,
        cancelled_at: r.try_get("cancelled_at")?,
        deployment_version: r.try_get("deployment_version")?,
        status_version: r.try_get("status_version")?,
        log_request: r.try_get("log_request_id")?,
        billed_until: r.try_get("billed_until")?,
        grace_since,
        grace_ends: grace_since.map(|g| g.saturating_add(grace_secs)),
    })
}

async fn list_contracts(
    State(s): S,
    Q(f): Q<ContractFilter>,
) -> AppResult<Json<Page<ContractView>>> {
    let limit = page_limit(f.limit)?;
    // Each filter is bound whether given or not, so the statement text is the same for
    // every query and the database plans it once.
    let sql = format!(
        "SELECT {CONTRACT_COLUMNS} FROM contracts WHERE id > $1 \
         AND ($2 = 0 OR twin_id = $2) AND ($3 = 0 OR node_id = $3) AND ($4 = '' OR state = $4) \
         ORDER BY id LIMIT $5"
    );
    let rows = sqlx::query(&sql)
        .bind(f.after.unwrap_or(0))
        .bind(f.twin.unwrap_or(0))
        .bind(f.node.unwrap_or(0))
        .bind(f.state.map_or("", ContractState::as_str))
        .bind(limit)
        .fetch_all(&s.db.pool)
        .await?;
    let items = rows
        .iter()
        .map(|r| contract_view(r, s.config.billing.grace_secs))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(page(items, limit, |c| c.id)))
}

async fn get_contract(State(s): S, Path(id): Path<String>) -> AppResult<Json<ContractView>> {
    let id = parse_id(&id, "contract")?;
    let row = sqlx::query(&format!(
        "SELECT {CONTRACT_COLUMNS} FROM contracts WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(&s.db.pool)
    .await?
    .ok_or_else(|| ApiError::NotFound(format!("contract {id} does not exist")))?;
    Ok(Json(contract_view(&row, s.config.billing.grace_secs)?))
}

// ---- mailboxes ----

/// Contracts one poll answers with: each carries at most one sealed deployment (about
/// 30 KiB), so a page stays near [`PAGE_BYTES`].
const MAILBOX_PAGE: i64 = 32;
/// How often a waiting poll looks at the database even without a tick from this process's
/// writer (another registry process on the same PostgreSQL may have written).
const MAILBOX_RECHECK: Duration = Duration::from_secs(5);

async fn post_deployment(
    State(s): S,
    headers: HeaderMap,
    body: Body,
) -> AppResult<(StatusCode, Json<Written>)> {
    signed_write(&s, &headers, body, "deploy").await
}

async fn post_status(
    State(s): S,
    headers: HeaderMap,
    body: Body,
) -> AppResult<(StatusCode, Json<Written>)> {
    signed_write(&s, &headers, body, "deployment_status").await
}

/// A node's long poll: answers at once when its mailbox changed after `after`, otherwise
/// when it does or `wait_secs` pass (an empty page).
async fn poll_mailbox(State(s): S, headers: HeaderMap, body: Body) -> AppResult<Json<MailboxPage>> {
    let (v, _) = open_signed(&s, &headers, body, "poll_mailbox").await?;
    let Payload::PollMailbox { after, wait_secs } = v.payload else {
        return Err(ApiError::WrongKind {
            expected: "poll_mailbox",
            got: v.payload.kind(),
        });
    };
    let node: i64 = sqlx::query("SELECT id FROM nodes WHERE public_key = $1")
        .bind(&v.signer_hex)
        .fetch_optional(&s.db.pool)
        .await?
        .ok_or_else(|| crate::writer::unknown_node(&v.signer_hex))?
        .try_get(0)?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(wait_secs.into());
    let mut changes = s.writer.mailbox_changes();
    loop {
        changes.borrow_and_update();
        let page = mailbox_page(&s.db, node, after as i64).await?;
        if !page.items.is_empty() || tokio::time::Instant::now() >= deadline {
            return Ok(Json(page));
        }
        let wake = (tokio::time::Instant::now() + MAILBOX_RECHECK).min(deadline);
        if let Ok(Err(_)) = tokio::time::timeout_at(wake, changes.changed()).await {
            // The writer is gone; the database may still answer.
            tokio::time::sleep_until(wake).await;
        }
    }
}

async fn mailbox_page(db: &Db, node: i64, after: i64) -> AppResult<MailboxPage> {
    let rows = sqlx::query(
        "SELECT c.id, c.rev, c.state, c.twin_id, t.public_key, c.cru, c.mru, c.sru, c.hru, \
            c.ipv4, c.deployment, \
            CASE WHEN c.log_request_id > COALESCE(c.log_answer_id, 0) THEN c.log_request END \
              AS log_request \
         FROM contracts c JOIN twins t ON t.id = c.twin_id \
         WHERE c.node_id = $1 AND c.rev > $2 ORDER BY c.rev LIMIT $3",
    )
    .bind(node)
    .bind(after)
    .bind(MAILBOX_PAGE)
    .fetch_all(&db.pool)
    .await?;
    let items = rows
        .iter()
        .map(|r| {
            Ok(MailboxItem {
                contract_id: r.try_get("id")?,
                rev: r.try_get("rev")?,
                state: contract_state(r)?,
                twin_id: r.try_get("twin_id")?,
                twin_key: r.try_get("public_key")?,
                resources: resources(r, "")?,
                deployment: r.try_get("deployment")?,
                log_request: r.try_get("log_request")?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    Ok(MailboxPage {
        rev: items.last().map_or(after, |i| i.rev),
        more: items.len() as i64 == MAILBOX_PAGE,
        items,
    })
}

async fn get_status(State(s): S, Path(id): Path<String>) -> AppResult<Json<StatusView>> {
    let id = parse_id(&id, "contract")?;
    let row = sqlx::query(
        "SELECT c.node_id, n.public_key, c.status FROM contracts c \
         JOIN nodes n ON n.id = c.node_id WHERE c.id = $1",
    )
    .bind(id)
    .fetch_optional(&s.db.pool)
    .await?
    .ok_or_else(|| ApiError::NotFound(format!("contract {id} does not exist")))?;
    let envelope: Option<Vec<u8>> = row.try_get("status")?;
    Ok(Json(StatusView {
        contract_id: id,
        node_id: row.try_get("node_id")?,
        node_key: row.try_get("public_key")?,
        envelope: envelope.ok_or_else(|| {
            ApiError::NotFound(format!(
                "the node has not reported on contract {id}'s deployment yet"
            ))
        })?,
    }))
}

async fn post_log_request(
    State(s): S,
    headers: HeaderMap,
    body: Body,
) -> AppResult<(StatusCode, Json<Written>)> {
    signed_write(&s, &headers, body, "request_logs").await
}

async fn post_logs(
    State(s): S,
    headers: HeaderMap,
    body: Body,
) -> AppResult<(StatusCode, Json<Written>)> {
    signed_write(&s, &headers, body, "logs").await
}

async fn get_logs(State(s): S, Path(id): Path<String>) -> AppResult<Json<LogsView>> {
    let id = parse_id(&id, "contract")?;
    let row = sqlx::query(
        "SELECT c.node_id, n.public_key, c.log_answer_id, c.log_answer FROM contracts c \
         JOIN nodes n ON n.id = c.node_id WHERE c.id = $1",
    )
    .bind(id)
    .fetch_optional(&s.db.pool)
    .await?
    .ok_or_else(|| ApiError::NotFound(format!("contract {id} does not exist")))?;
    let answer: (Option<i64>, Option<Vec<u8>>) =
        (row.try_get("log_answer_id")?, row.try_get("log_answer")?);
    let (Some(request), Some(envelope)) = answer else {
        return Err(ApiError::NotFound(format!(
            "the node has not answered a log request on contract {id} yet"
        )));
    };
    Ok(Json(LogsView {
        contract_id: id,
        request,
        node_id: row.try_get("node_id")?,
        node_key: row.try_get("public_key")?,
        envelope,
    }))
}

// ---- stats ----

/// SQL for summing a column that holds values in `0..2^63` without overflowing 64 bits:
/// the high and low 32 bits are summed apart (each sum fits for up to 2^31 rows) and joined
/// in 128 bits by [`wide_sum`]. Both engines divide integers exactly.
/// The sum of `expr` over rows, in two 32-bit halves summed separately (each fits a
/// 64-bit sum over any number of nodes), as `{alias}_hi` and `{alias}_lo`.
fn split_sum(expr: &str, alias: &str) -> String {
    format!(
        "CAST(COALESCE(SUM(({expr}) / 4294967296), 0) AS BIGINT) AS {alias}_hi, \
         CAST(COALESCE(SUM(({expr}) % 4294967296), 0) AS BIGINT) AS {alias}_lo"
    )
}

fn wide_sum(r: &AnyRow, col: &str) -> Result<u128, sqlx::Error> {
    let hi: i64 = r.try_get(format!("{col}_hi").as_str())?;
    let lo: i64 = r.try_get(format!("{col}_lo").as_str())?;
    Ok((u128::from(hi.max(0) as u64) << 32) + u128::from(lo.max(0) as u64))
}

const CAPACITY_COLUMNS: [&str; 5] = ["cru", "mru", "sru", "hru", "ipv4"];

/// Totals over every node and over the nodes up (last seen since `up_since` and not
/// stopping), in one pass over the node table.
pub(crate) async fn grid_totals(db: &Db, up_since: i64) -> Result<(Totals, Totals), sqlx::Error> {
    const UP: &str = "last_seen >= $1 AND stopping = 0";
    let mut cols = vec![
        "COUNT(*) AS all_nodes".to_string(),
        format!("CAST(COALESCE(SUM(CASE WHEN {UP} THEN 1 ELSE 0 END), 0) AS BIGINT) AS up_nodes"),
    ];
    for c in CAPACITY_COLUMNS {
        cols.push(split_sum(c, &format!("all_{c}")));
        cols.push(split_sum(
            &format!("CASE WHEN {UP} THEN {c} ELSE 0 END"),
            &format!("up_{c}"),
        ));
    }
    for u in ["cu", "su"] {
        cols.push(format!(
            "CAST(COALESCE(SUM({u}), 0.0) AS DOUBLE PRECISION) AS all_{u}"
        ));
        cols.push(format!(
            "CAST(COALESCE(SUM(CASE WHEN {UP} THEN {u} ELSE 0.0 END), 0.0) AS DOUBLE PRECISION) AS up_{u}"
        ));
    }
    let sql = format!("SELECT {} FROM nodes", cols.join(", "));
    let r = sqlx::query(&sql).bind(up_since).fetch_one(&db.pool).await?;
    let read = |p: &str| -> Result<Totals, sqlx::Error> {
        Ok(Totals {
            nodes: r.try_get(format!("{p}_nodes").as_str())?,
            capacity: ResourceTotals {
                cru: wide_sum(&r, &format!("{p}_cru"))?,
                mru: wide_sum(&r, &format!("{p}_mru"))?,
                sru: wide_sum(&r, &format!("{p}_sru"))?,
                hru: wide_sum(&r, &format!("{p}_hru"))?,
                ipv4: wide_sum(&r, &format!("{p}_ipv4"))?,
            },
            units: Units {
                cu: r.try_get(format!("{p}_cu").as_str())?,
                su: r.try_get(format!("{p}_su").as_str())?,
            },
        })
    };
    Ok((read("all")?, read("up")?))
}

pub(crate) async fn count(db: &Db, table: &str) -> Result<i64, sqlx::Error> {
    sqlx::query(&format!("SELECT COUNT(*) FROM {table}"))
        .fetch_one(&db.pool)
        .await?
        .try_get(0)
}

async fn stats(State(s): S) -> AppResult<Json<Stats>> {
    let up_since = now() - s.config.up_window_secs;
    let (all, up) = grid_totals(&s.db, up_since).await?;
    Ok(Json(Stats {
        twins: count(&s.db, "twins").await?,
        farms: count(&s.db, "farms").await?,
        reports: count(&s.db, "reports").await?,
        up_window_secs: s.config.up_window_secs,
        up,
        all,
    }))
}
