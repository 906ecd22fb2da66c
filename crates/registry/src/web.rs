//! The registry's web page for auditors and farmers: the grid's capacity, nodes up over
//! time, and a page per farm and per node with charts. Rendered on the server as plain
//! HTML with inline SVG: nothing to build, no script, readable in any browser.
//!
//! Every figure on the page links to the JSON API it comes from, so a reader can check it
//! (and `grid audit` can check the API against the signed reports).

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use accounting::{format_usd, Account, Tft, PERIOD_SECS};
use axum::extract::{Path, State};
use axum::response::Html;
use axum::routing::get;
use axum::Router;
use gridapi::{NodeStatus, NodeView, Totals};
use gridtypes::units::gib;
use maud::{html, Markup, PreEscaped, DOCTYPE};
use sqlx::Row;

use crate::api::{grid_totals, node_view, parse_id, AppState, NODE_COLUMNS};
use crate::db::Db;
use crate::error::ApiError;
use crate::ledger;

type S = State<Arc<AppState>>;
type Page = Result<Html<String>, ApiError>;

/// Days of history the overview's chart shows.
const CHART_DAYS: i64 = 7;
/// Farms listed on the overview.
const FARMS_LISTED: i64 = 50;
/// Nodes listed on a farm's page.
const NODES_LISTED: i64 = 500;
/// Days of uptime readings a node's chart shows.
const NODE_CHART_DAYS: i64 = 14;

/// The page's routes.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/", get(overview))
        .route("/farms/{id}", get(farm_page))
        .route("/nodes/{id}", get(node_page))
}

/// Records how the grid stands now, once per `every` slot across all replicas.
pub async fn sample(db: &Db, now: i64, every: i64, up_window: i64) -> Result<(), sqlx::Error> {
    let slot = now - now.rem_euclid(every.max(1));
    let (all, up) = grid_totals(db, now - up_window).await?;
    sqlx::query(
        "INSERT INTO grid_samples (at, nodes, nodes_up, cu_up, su_up) VALUES ($1, $2, $3, $4, $5) \
         ON CONFLICT (at) DO NOTHING",
    )
    .bind(slot)
    .bind(all.nodes)
    .bind(up.nodes)
    .bind(up.units.cu)
    .bind(up.units.su)
    .execute(&db.pool)
    .await?;
    Ok(())
}

/// Samples the grid every `every` until the process ends; failures are logged.
pub async fn sampler(db: Db, every: Duration, up_window: i64) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let secs = every.as_secs().max(1) as i64;
        if let Err(e) = sample(&db, gridtypes::now(), secs, up_window).await {
            tracing::warn!(error = %svclog::error_chain(&e), "sampling the grid failed");
        }
    }
}

fn date(t: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_secs(t.max(0) as u64);
    humantime::format_rfc3339_seconds(t)
        .to_string()
        .replace('T', " ")
        .trim_end_matches('Z')
        .to_string()
}

fn day(t: i64) -> String {
    date(t).chars().take(10).collect()
}

fn tib(bytes: u128) -> String {
    format!("{:.1}", bytes as f64 / (1u128 << 40) as f64)
}

const STYLE: &str = "body{font-family:'DejaVu Sans',sans-serif;margin:2em;color:#222;max-width:1100px}\
h1{font-size:1.6em;margin-bottom:.2em}h2{font-size:1.2em;margin-top:1.6em}\
.figures{display:flex;flex-wrap:wrap;gap:1em}.figure{border:1px solid #ccc;border-radius:6px;padding:.6em 1em;min-width:9em}\
.figure b{display:block;font-size:1.5em}table{border-collapse:collapse;margin-top:.5em}\
td,th{border-bottom:1px solid #ddd;padding:.25em .8em;text-align:right}th{background:#f3f3f3}\
td:first-child,th:first-child{text-align:left}.up{color:#17803d}.down{color:#b42318}.stopped{color:#8a6d00}\
svg text{font-size:11px;fill:#444}a{color:#1a56c4}.note{color:#666;font-size:.9em}";

fn page(title: &str, body: Markup) -> Html<String> {
    Html(
        html! {
            (DOCTYPE)
            html lang="en" {
                head {
                    meta charset="utf-8";
                    meta name="viewport" content="width=device-width, initial-scale=1";
                    title { (title) " — gridos registry" }
                    style { (PreEscaped(STYLE)) }
                }
                body {
                    p.note { a href="/" { "gridos registry" } " · "
                        a href="/api/v1/stats" { "JSON API" } " · "
                        a href="/metrics" { "metrics" } }
                    (body)
                }
            }
        }
        .into_string(),
    )
}

fn figure(id: &str, label: &str, value: String) -> Markup {
    html! { div.figure { span { (label) } b id=(id) { (value) } } }
}

/// A line chart of `points` (time, value): an SVG with the value range on the left and the
/// time range below.
fn line_chart(points: &[(i64, f64)], label: &str) -> Markup {
    let (w, h, left, bottom) = (900.0, 220.0, 60.0, 24.0);
    if points.len() < 2 {
        return html! { p.note { "Not enough data for a chart of " (label) " yet." } };
    }
    let (t0, t1) = (points[0].0, points[points.len() - 1].0);
    let vmax = points.iter().map(|p| p.1).fold(0.0f64, f64::max).max(1.0);
    let span = (t1 - t0).max(1) as f64;
    let x = |t: i64| left + (t - t0) as f64 / span * (w - left - 10.0);
    let y = |v: f64| 10.0 + (1.0 - v / vmax) * (h - bottom - 10.0);
    let path: Vec<String> = points
        .iter()
        .map(|(t, v)| format!("{:.1},{:.1}", x(*t), y(*v)))
        .collect();
    html! {
        svg width=(w) height=(h) viewBox=(format!("0 0 {w} {h}")) role="img" aria-label=(label) {
            line x1=(left) y1=(h - bottom) x2=(w - 10.0) y2=(h - bottom) stroke="#999" {}
            line x1=(left) y1="10" x2=(left) y2=(h - bottom) stroke="#999" {}
            text x="4" y="18" { (format!("{vmax:.0}")) }
            text x="4" y=(h - bottom) { "0" }
            text x=(left) y=(h - 6.0) { (date(t0)) }
            text x=(w - 150.0) y=(h - 6.0) { (date(t1)) }
            polyline points=(path.join(" ")) fill="none" stroke="#1a56c4" stroke-width="2" {}
        }
    }
}

/// A bar chart of labelled values.
fn bar_chart(bars: &[(String, f64)], label: &str) -> Markup {
    if bars.is_empty() {
        return html! { p.note { "No " (label) " yet." } };
    }
    let (w, h, bottom) = (900.0, 200.0, 24.0);
    let vmax = bars.iter().map(|b| b.1).fold(0.0f64, f64::max).max(1e-9);
    let slot = (w - 20.0) / bars.len() as f64;
    html! {
        svg width=(w) height=(h) viewBox=(format!("0 0 {w} {h}")) role="img" aria-label=(label) {
            @for (i, (name, v)) in bars.iter().enumerate() {
                @let bh = v / vmax * (h - bottom - 20.0);
                rect x=(10.0 + i as f64 * slot + 2.0) y=(h - bottom - bh) width=((slot - 4.0).max(1.0)) height=(bh) fill="#1a56c4" {
                    title { (name) ": " (format!("{v:.2}")) }
                }
                @if bars.len() <= 24 {
                    text x=(10.0 + i as f64 * slot + 2.0) y=(h - 8.0) { (name) }
                }
            }
            text x="12" y="14" { "max " (format!("{vmax:.2}")) }
        }
    }
}

fn status(s: NodeStatus) -> Markup {
    let (class, text) = match s {
        NodeStatus::Up => ("up", "up"),
        NodeStatus::Down => ("down", "down"),
        NodeStatus::Stopped => ("stopped", "stopped"),
    };
    html! { span class=(class) { (text) } }
}

fn capacity_figures(prefix: &str, t: &Totals) -> Markup {
    html! {
        div.figures {
            (figure(&format!("{prefix}-cu"), "CU", format!("{:.2}", t.units.cu)))
            (figure(&format!("{prefix}-su"), "SU", format!("{:.2}", t.units.su)))
            (figure(&format!("{prefix}-cru"), "cores", t.capacity.cru.to_string()))
            (figure(&format!("{prefix}-mru"), "memory GiB", format!("{:.0}", t.capacity.mru as f64 / (1u64 << 30) as f64)))
            (figure(&format!("{prefix}-sru"), "SSD TiB", tib(t.capacity.sru)))
            (figure(&format!("{prefix}-hru"), "HDD TiB", tib(t.capacity.hru)))
            (figure(&format!("{prefix}-ipv4"), "public IPv4", t.capacity.ipv4.to_string()))
        }
    }
}

async fn overview(State(s): S) -> Page {
    let now = gridtypes::now();
    let up_since = now - s.config.up_window_secs;
    let (all, up) = grid_totals(&s.db, up_since).await?;
    let twins = crate::api::count(&s.db, "twins").await?;
    let farms_count = crate::api::count(&s.db, "farms").await?;
    let minted = ledger::balance(&s.db, Account::Mint).await?;
    let closed: i64 = sqlx::query("SELECT COUNT(*) FROM periods")
        .fetch_one(&s.db.pool)
        .await?
        .try_get(0)?;
    let samples: Vec<(i64, f64)> =
        sqlx::query("SELECT at, nodes_up FROM grid_samples WHERE at >= $1 ORDER BY at")
            .bind(now - CHART_DAYS * 86_400)
            .fetch_all(&s.db.pool)
            .await?
            .iter()
            .map(|r| Ok((r.try_get::<i64, _>(0)?, r.try_get::<i64, _>(1)? as f64)))
            .collect::<Result<_, sqlx::Error>>()?;
    // The largest farms: counted per farm on the node table (its farm index), joined with
    // the farms' names only for the few listed.
    let farms = sqlx::query(
        "SELECT f.id, f.name, g.nodes, g.up, g.cu FROM \
         (SELECT farm_id, COUNT(*) AS nodes, \
            CAST(SUM(CASE WHEN last_seen >= $1 AND stopping = 0 THEN 1 ELSE 0 END) AS BIGINT) AS up, \
            CAST(SUM(CASE WHEN last_seen >= $1 AND stopping = 0 THEN cu ELSE 0.0 END) AS DOUBLE PRECISION) AS cu \
          FROM nodes GROUP BY farm_id ORDER BY COUNT(*) DESC, farm_id LIMIT $2) g \
         JOIN farms f ON f.id = g.farm_id ORDER BY g.nodes DESC, f.id",
    )
    .bind(up_since)
    .bind(FARMS_LISTED)
    .fetch_all(&s.db.pool)
    .await?;
    let body = html! {
        h1 { "The grid" }
        p.note { "As of " (date(now)) " UTC. A node is up when it reported within the last "
            (s.config.up_window_secs / 60) " minutes." }
        div.figures {
            (figure("nodes-up", "nodes up", up.nodes.to_string()))
            (figure("nodes-all", "nodes registered", all.nodes.to_string()))
            (figure("farms", "farms", farms_count.to_string()))
            (figure("twins", "twins", twins.to_string()))
            (figure("minted", "TFT minted", Tft(minted.0.saturating_neg()).to_string()))
            (figure("periods", "periods closed", closed.to_string()))
        }
        h2 { "Capacity of the nodes up" }
        (capacity_figures("up", &up))
        h2 { "Nodes up, last " (CHART_DAYS) " days" }
        (line_chart(&samples, "nodes up over time"))
        h2 { "Farms" }
        table {
            tr { th { "farm" } th { "nodes" } th { "up" } th { "CU up" } }
            @for r in &farms {
                @let id: i64 = r.try_get("id")?;
                @let name: String = r.try_get("name")?;
                tr {
                    td { a href=(format!("/farms/{id}")) { (name) " (" (id) ")" } }
                    td { (r.try_get::<i64, _>("nodes")?) }
                    td { (r.try_get::<i64, _>("up")?) }
                    td { (format!("{:.2}", r.try_get::<f64, _>("cu")?)) }
                }
            }
        }
        @if farms_count > FARMS_LISTED {
            p.note { "The " (FARMS_LISTED) " largest farms of " (farms_count) " (farms without nodes are not listed); all of them: "
                a href="/api/v1/farms" { "/api/v1/farms" } "." }
        }
    };
    Ok(page("The grid", body))
}

async fn farm_page(State(s): S, Path(id): Path<String>) -> Page {
    let id = parse_id(&id, "farm")?;
    let now = gridtypes::now();
    let up_since = now - s.config.up_window_secs;
    let farm = sqlx::query("SELECT name, twin_id, policy_id, created_at FROM farms WHERE id = $1")
        .bind(id)
        .fetch_optional(&s.db.pool)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("farm {id} does not exist")))?;
    let name: String = farm.try_get("name")?;
    let owner: i64 = farm.try_get("twin_id")?;
    let policy: Option<i64> = farm.try_get("policy_id")?;
    let balance = ledger::balance(&s.db, Account::Twin(owner)).await?;
    let nodes: Vec<NodeView> = sqlx::query(&format!(
        "SELECT {NODE_COLUMNS} FROM nodes WHERE farm_id = $1 ORDER BY id LIMIT $2"
    ))
    .bind(id)
    .bind(NODES_LISTED)
    .fetch_all(&s.db.pool)
    .await?
    .iter()
    .map(|r| node_view(r, up_since))
    .collect::<Result<_, _>>()?;
    let total: i64 = sqlx::query("SELECT COUNT(*) FROM nodes WHERE farm_id = $1")
        .bind(id)
        .fetch_one(&s.db.pool)
        .await?
        .try_get(0)?;
    // TFT earned per period length of calendar time, oldest first.
    let mut months: Vec<(i64, i64)> = Vec::new();
    for r in sqlx::query(
        "SELECT end_at, tft FROM periods WHERE farm_id = $1 ORDER BY end_at DESC LIMIT 5000",
    )
    .bind(id)
    .fetch_all(&s.db.pool)
    .await?
    {
        let bucket = r.try_get::<i64, _>(0)?.div_euclid(PERIOD_SECS);
        let tft: i64 = r.try_get(1)?;
        match months.iter_mut().find(|(b, _)| *b == bucket) {
            Some((_, sum)) => *sum = sum.saturating_add(tft),
            None => months.push((bucket, tft)),
        }
    }
    months.sort();
    let bars: Vec<(String, f64)> = months
        .iter()
        .map(|(b, t)| {
            (
                day(b * PERIOD_SECS),
                *t as f64 / accounting::TFT_UNITS as f64,
            )
        })
        .collect();
    let up = nodes.iter().filter(|n| n.status == NodeStatus::Up).count();
    let cu: f64 = nodes
        .iter()
        .filter(|n| n.status == NodeStatus::Up)
        .map(|n| n.units.cu)
        .sum();
    let body = html! {
        h1 { "Farm " (name) " (" (id) ")" }
        p.note { "Owned by twin " (owner) ", created " (date(farm.try_get::<i64, _>("created_at")?)) ". "
            "Farming policy: " (policy.map_or("the default".to_string(), |p| format!("policy {p}"))) " ("
            a href="/api/v1/policies" { "rates" } "). JSON: "
            a href=(format!("/api/v1/farms/{id}")) { "farm" } ", "
            a href=(format!("/api/v1/periods?farm={id}")) { "periods" } "." }
        div.figures {
            (figure("farm-nodes", "nodes", total.to_string()))
            (figure("farm-up", "nodes up", up.to_string()))
            (figure("farm-cu", "CU up", format!("{cu:.2}")))
            (figure("farm-balance", "owner's TFT", balance.to_string()))
        }
        h2 { "TFT earned per period" }
        (bar_chart(&bars, "TFT earned per period"))
        h2 { "Nodes" }
        table {
            tr { th { "node" } th { "status" } th { "CU" } th { "SU" } th { "cores" } th { "memory GiB" } th { "SSD GiB" } th { "HDD GiB" } th { "last report" } }
            @for n in &nodes {
                tr {
                    td { a href=(format!("/nodes/{}", n.id)) { (n.id) } }
                    td { (status(n.status)) }
                    td { (format!("{:.2}", n.units.cu)) }
                    td { (format!("{:.2}", n.units.su)) }
                    td { (n.capacity.cru) }
                    td { (format!("{:.0}", gib(n.capacity.mru))) }
                    td { (format!("{:.0}", gib(n.capacity.sru))) }
                    td { (format!("{:.0}", gib(n.capacity.hru))) }
                    td { (date(n.last_seen)) }
                }
            }
        }
        @if total > NODES_LISTED {
            p.note { "The first " (NODES_LISTED) " of " (total) " nodes; all of them: "
                a href=(format!("/api/v1/nodes?farm={id}")) { "the JSON list" } "." }
        }
    };
    Ok(page(&format!("Farm {name}"), body))
}

async fn node_page(State(s): S, Path(id): Path<String>) -> Page {
    let id = parse_id(&id, "node")?;
    let now = gridtypes::now();
    let up_since = now - s.config.up_window_secs;
    let row = sqlx::query(&format!("SELECT {NODE_COLUMNS} FROM nodes WHERE id = $1"))
        .bind(id)
        .fetch_optional(&s.db.pool)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("node {id} does not exist")))?;
    let n = node_view(&row, up_since)?;
    let readings: Vec<(i64, f64)> = sqlx::query(
        "SELECT signed_at, reading FROM reports WHERE node_id = $1 AND kind = 'uptime' \
         AND signed_at >= $2 ORDER BY signed_at LIMIT 5000",
    )
    .bind(id)
    .bind(now - NODE_CHART_DAYS * 86_400)
    .fetch_all(&s.db.pool)
    .await?
    .iter()
    .map(|r| {
        Ok((
            r.try_get::<i64, _>(0)?,
            r.try_get::<Option<i64>, _>(1)?.unwrap_or(0) as f64 / 86_400.0,
        ))
    })
    .collect::<Result<_, sqlx::Error>>()?;
    let periods = sqlx::query(
        "SELECT id, idx, start_at, end_at, up_secs, outcome, usd, tft FROM periods \
         WHERE node_id = $1 ORDER BY idx DESC LIMIT 24",
    )
    .bind(id)
    .fetch_all(&s.db.pool)
    .await?;
    let body = html! {
        h1 { "Node " (id) }
        p.note { "Farm " a href=(format!("/farms/{}", n.farm_id)) { (n.farm_id) } ", key "
            code { (n.public_key) } ". Registered " (date(n.registered_at)) ", last report "
            (date(n.last_seen)) ". JSON: " a href=(format!("/api/v1/nodes/{id}")) { "node" } ", "
            a href=(format!("/api/v1/nodes/{id}/reports")) { "signed reports" } "." }
        @if n.virtualized { p.note { "This node runs under a hypervisor: it earns nothing." } }
        div.figures {
            div.figure { span { "status" } b id="node-status" { (status(n.status)) } }
            (figure("node-cu", "CU", format!("{:.2}", n.units.cu)))
            (figure("node-su", "SU", format!("{:.2}", n.units.su)))
            (figure("node-cru", "cores", n.capacity.cru.to_string()))
            (figure("node-mru", "memory GiB", format!("{:.1}", gib(n.capacity.mru))))
            (figure("node-sru", "SSD GiB", format!("{:.0}", gib(n.capacity.sru))))
            (figure("node-hru", "HDD GiB", format!("{:.0}", gib(n.capacity.hru))))
            (figure("node-uptime", "uptime days", format!("{:.1}", n.uptime_secs as f64 / 86_400.0)))
        }
        h2 { "Uptime reported, last " (NODE_CHART_DAYS) " days (days since boot)" }
        (line_chart(&readings, "reported uptime"))
        h2 { "Minting periods" }
        @if periods.is_empty() {
            p.note { "No period closed yet: the first closes 30.45 days after the node first registered." }
        } @else {
            table {
                tr { th { "period" } th { "from" } th { "to" } th { "uptime %" } th { "outcome" } th { "USD" } th { "TFT" } }
                @for p in &periods {
                    @let (start, end): (i64, i64) = (p.try_get("start_at")?, p.try_get("end_at")?);
                    @let up: i64 = p.try_get("up_secs")?;
                    tr {
                        td { a href=(format!("/api/v1/periods/{}", p.try_get::<i64, _>("id")?)) { (p.try_get::<i64, _>("idx")?) } }
                        td { (day(start)) }
                        td { (day(end)) }
                        td { (format!("{:.2}", up as f64 * 100.0 / (end - start).max(1) as f64)) }
                        td { (p.try_get::<String, _>("outcome")?) }
                        td { (format_usd(p.try_get::<i64, _>("usd")?.max(0) as u64)) }
                        td { (Tft(p.try_get("tft")?).to_string()) }
                    }
                }
            }
        }
    };
    Ok(page(&format!("Node {id}"), body))
}
