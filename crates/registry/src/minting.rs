//! Closing minting periods: for every node whose period ended, what its signed reports
//! prove (uptime, lowest capacity, traffic), the reward its farm's policy gives for it, and
//! the ledger transaction that pays it, booked once.
//!
//! The figures come from `accounting`, which `grid audit` runs again on the reports it
//! downloads and verifies itself; what is read here is what an auditor can read too.

use std::collections::HashMap;
use std::time::Duration;

use accounting::{
    account, price_at, reward, Account, FarmingPolicy, Period, Receipt, RewardInput, Sample, Tft,
};
use futures_util::future::try_join_all;
use gridtypes::{Envelope, Payload, Report, Resources, MAX_CLOCK_SKEW_SECS};
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, AnyPool, Row};

use crate::db::{resources, Db};
use crate::ledger::{self, LedgerError};

/// When periods are closed (`grid-registry serve --close-every --settle`).
#[derive(Debug, Clone, Copy)]
pub struct MintingConfig {
    /// How often the server looks for periods to close.
    pub every: Duration,
    /// How long after a period's end it is closed: the report that follows the end proves
    /// the period's last stretch of uptime, so it is waited for.
    pub settle_secs: i64,
}

impl Default for MintingConfig {
    fn default() -> Self {
        MintingConfig {
            every: Duration::from_secs(600),
            // Three report intervals and the clock skew: a report delayed by a short outage
            // still counts for the period it closes.
            settle_secs: 3 * 40 * 60 + MAX_CLOCK_SKEW_SECS,
        }
    }
}

/// What one round of closing did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct Closed {
    /// Periods closed now.
    pub periods: u64,
    /// Of those, periods that earned a reward.
    pub paid: u64,
    /// TFT minted.
    pub minted: Tft,
}

/// Node-periods whose figures are computed, then booked in one database transaction.
const CHUNK: usize = 256;
/// Node-periods whose reports are read at once.
const READ_AHEAD: usize = 4;

struct NodeRow {
    id: i64,
    farm_id: i64,
    farm_twin: i64,
    policy_id: Option<i64>,
    connected_at: i64,
    connected: Resources,
    last: Option<i64>,
}

struct Settings {
    policies: HashMap<i64, FarmingPolicy>,
    default: Option<i64>,
    prices: Vec<(i64, u64)>,
}

async fn settings(db: &Db) -> Result<Settings, sqlx::Error> {
    let policies = ledger::policies(db).await?;
    Ok(Settings {
        default: policies.iter().find(|p| p.default).map(|p| p.policy.id),
        policies: policies
            .into_iter()
            .map(|p| (p.policy.id, p.policy))
            .collect(),
        prices: ledger::prices(db)
            .await?
            .iter()
            .map(|p| (p.set_at, p.micro_usd))
            .collect(),
    })
}

fn node_row(r: &AnyRow) -> Result<NodeRow, sqlx::Error> {
    Ok(NodeRow {
        id: r.try_get("id")?,
        farm_id: r.try_get("farm_id")?,
        farm_twin: r.try_get("twin_id")?,
        policy_id: r.try_get("policy_id")?,
        connected_at: r.try_get("connected_at")?,
        connected: resources(r, "connected_")?,
        last: r.try_get("last")?,
    })
}

/// Closes every period that ended at least `settle_secs` before `now`, oldest first. Safe
/// to run from several registry replicas at once: a period is closed and paid once.
pub async fn close_due(db: &Db, now: i64, settle_secs: i64) -> Result<Closed, LedgerError> {
    // A report is signed at most MAX_CLOCK_SKEW_SECS from the registry clock: an earlier
    // close could miss one signed inside the period.
    let settle = settle_secs.max(MAX_CLOCK_SKEW_SECS);
    let settings = settings(db).await?;
    let horizon = now.saturating_sub(settle);
    let nodes: Vec<NodeRow> = sqlx::query(
        "SELECT n.id, n.farm_id, f.twin_id, f.policy_id, n.connected_at, n.connected_cru, \
            n.connected_mru, n.connected_sru, n.connected_hru, n.connected_ipv4, \
            (SELECT MAX(p.idx) FROM periods p WHERE p.node_id = n.id) AS last \
         FROM nodes n JOIN farms f ON f.id = n.farm_id \
         WHERE n.connected_at IS NOT NULL AND n.connected_at <= $1 ORDER BY n.id",
    )
    .bind(horizon.saturating_sub(accounting::PERIOD_SECS))
    .fetch_all(&db.pool)
    .await?
    .iter()
    .map(node_row)
    .collect::<Result<_, _>>()?;
    let mut due: Vec<(usize, Period)> = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        let mut index = n.last.map_or(0, |l| l.max(-1) as u64 + 1);
        loop {
            let period = Period::nth(n.connected_at, index);
            if period.end > horizon {
                break;
            }
            due.push((i, period));
            index += 1;
        }
    }
    let mut closed = Closed::default();
    for chunk in due.chunks(CHUNK) {
        let mut receipts: Vec<(usize, Receipt)> = Vec::with_capacity(chunk.len());
        for group in chunk.chunks(READ_AHEAD) {
            let reads = group.iter().map(|&(i, period)| {
                let n = &nodes[i];
                let policy = n
                    .policy_id
                    .or(settings.default)
                    .and_then(|p| settings.policies.get(&p))
                    .cloned();
                let price = price_at(&settings.prices, n.connected_at);
                period_input(&db.pool, n, period, policy, price)
            });
            for (&(i, _), input) in group.iter().zip(try_join_all(reads).await?) {
                receipts.push((i, reward(input)));
            }
        }
        let mut tx = db.begin_write().await?;
        for (i, receipt) in &receipts {
            if book_period(&mut tx, &nodes[*i], receipt, now).await? {
                closed.periods += 1;
                if receipt.tft.0 > 0 {
                    closed.paid += 1;
                    closed.minted = Tft(closed.minted.0.saturating_add(receipt.tft.0));
                }
            }
        }
        tx.commit().await?;
    }
    Ok(closed)
}

/// Books a period and its reward; false when it was closed before (nothing changes).
async fn book_period(
    conn: &mut AnyConnection,
    node: &NodeRow,
    r: &Receipt,
    now: i64,
) -> Result<bool, LedgerError> {
    let receipt = serde_json::to_string(r).map_err(|e| LedgerError::Invalid(e.to_string()))?;
    let p = &r.input.period;
    let tx_id = if r.tft.0 > 0 {
        let postings = accounting::transfer(Account::Mint, Account::Twin(node.farm_twin), r.tft);
        let reference = format!("reward:node:{}:period:{}", node.id, p.index);
        ledger::book(conn, &reference, "reward", &receipt, &postings, now).await?
    } else {
        None
    };
    let inserted = sqlx::query(
        "INSERT INTO periods (node_id, idx, start_at, end_at, farm_id, up_secs, reports, outcome, \
            usd, tft, receipt, tx_id, closed_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) \
         ON CONFLICT (node_id, idx) DO NOTHING",
    )
    .bind(node.id)
    .bind(p.index as i64)
    .bind(p.start)
    .bind(p.end)
    .bind(node.farm_id)
    .bind(r.input.uptime.up_secs)
    .bind(r.input.uptime.reports as i64)
    .bind(r.outcome.as_str())
    .bind(r.usd.min(i64::MAX as u64) as i64)
    .bind(r.tft.0)
    .bind(&receipt)
    .bind(tx_id)
    .bind(now)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    Ok(inserted == 1)
}

fn sample(r: &AnyRow) -> Result<Sample, sqlx::Error> {
    Ok(Sample {
        at: r.try_get(0)?,
        uptime_secs: r.try_get::<Option<i64>, _>(1)?.unwrap_or(0).max(0) as u64,
    })
}

/// Reads what a node's reports say about `period`.
async fn period_input(
    pool: &AnyPool,
    n: &NodeRow,
    period: Period,
    policy: Option<FarmingPolicy>,
    price: Option<u64>,
) -> Result<RewardInput, sqlx::Error> {
    let before = sqlx::query(
        "SELECT signed_at, reading FROM reports WHERE node_id = $1 AND kind = 'uptime' \
         AND signed_at < $2 ORDER BY signed_at DESC, id DESC LIMIT 1",
    )
    .bind(n.id)
    .bind(period.start)
    .fetch_optional(pool)
    .await?;
    let within = sqlx::query(
        "SELECT signed_at, reading FROM reports WHERE node_id = $1 AND kind = 'uptime' \
         AND signed_at >= $2 AND signed_at < $3 ORDER BY signed_at, id",
    )
    .bind(n.id)
    .bind(period.start)
    .bind(period.end)
    .fetch_all(pool)
    .await?;
    let after = sqlx::query(
        "SELECT signed_at, reading FROM reports WHERE node_id = $1 AND kind = 'uptime' \
         AND signed_at >= $2 ORDER BY signed_at, id LIMIT 1",
    )
    .bind(n.id)
    .bind(period.end)
    .fetch_optional(pool)
    .await?;
    let mut samples = Vec::with_capacity(within.len() + 2);
    for r in before.iter().chain(within.iter()).chain(after.iter()) {
        samples.push(sample(r)?);
    }
    let traffic: i64 = sqlx::query(
        "SELECT CAST(COALESCE(SUM(reading), 0) AS BIGINT) FROM reports WHERE node_id = $1 \
         AND kind = 'consumption' AND signed_at >= $2 AND signed_at < $3",
    )
    .bind(n.id)
    .bind(period.start)
    .bind(period.end)
    .fetch_one(pool)
    .await?
    .try_get(0)?;
    // Registrations and capacity changes are rare: their envelopes are read whole.
    let changes = sqlx::query(
        "SELECT signed_at, envelope FROM reports WHERE node_id = $1 \
         AND kind IN ('registration', 'capacity') AND signed_at < $2 ORDER BY signed_at, id",
    )
    .bind(n.id)
    .bind(period.end)
    .fetch_all(pool)
    .await?;
    let mut history = Vec::with_capacity(changes.len());
    for r in &changes {
        let at: i64 = r.try_get(0)?;
        let raw: Vec<u8> = r.try_get(1)?;
        if let Some(change) = capacity_change(&raw) {
            history.push((at, change));
        }
    }
    let (capacities, virtualized) = accounting::capacities_in(&history, &period);
    Ok(RewardInput {
        node_id: n.id,
        farm_id: n.farm_id,
        period,
        connected: n.connected,
        price,
        capacities,
        traffic_bytes: traffic.max(0) as u64,
        uptime: account(&period, &samples),
        virtualized,
        policy,
    })
}

/// What a stored registration or capacity report says: the capacity, and for a
/// registration whether the node is virtualised.
pub fn capacity_change(envelope: &[u8]) -> Option<(Resources, Option<bool>)> {
    let env = Envelope::from_json(envelope).ok()?;
    match Payload::from_bytes(&env.payload).ok()? {
        Payload::RegisterNode(reg) => Some((reg.capacity, Some(reg.virtualized))),
        Payload::Report(Report::Capacity { capacity, .. }) => Some((capacity, None)),
        _ => None,
    }
}

/// Fills the `reading` column of reports stored before it existed, a batch at a time.
pub async fn backfill_readings(db: &Db) -> Result<u64, sqlx::Error> {
    let mut filled = 0u64;
    loop {
        let rows = sqlx::query(
            "SELECT id, envelope FROM reports WHERE reading IS NULL \
             AND kind IN ('uptime', 'consumption') ORDER BY id LIMIT 1000",
        )
        .fetch_all(&db.pool)
        .await?;
        if rows.is_empty() {
            return Ok(filled);
        }
        let mut tx = db.begin_write().await?;
        for r in &rows {
            let id: i64 = r.try_get(0)?;
            let raw: Vec<u8> = r.try_get(1)?;
            let reading = Envelope::from_json(&raw)
                .ok()
                .and_then(|e| Payload::from_bytes(&e.payload).ok())
                .and_then(|p| match p {
                    Payload::Report(Report::Uptime { uptime_secs, .. }) => Some(uptime_secs),
                    Payload::Report(Report::Consumption(c)) => Some(c.traffic_bytes),
                    _ => None,
                })
                // A stored report that no longer parses counts for nothing, and is not
                // looked at again.
                .unwrap_or(0);
            sqlx::query("UPDATE reports SET reading = $1 WHERE id = $2")
                .bind(reading.min(i64::MAX as u64) as i64)
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        filled += rows.len() as u64;
    }
}

/// Closes due periods every `config.every` until the process ends; failures are logged
/// and tried again next round.
pub async fn run(db: Db, config: MintingConfig) {
    match backfill_readings(&db).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(reports = n, "filled the accounting column of older reports"),
        Err(e) => tracing::error!(error = %svclog::error_chain(&e), "filling older reports failed"),
    }
    let mut tick = tokio::time::interval(config.every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match close_due(&db, gridtypes::now(), config.settle_secs).await {
            Ok(c) if c.periods > 0 => tracing::info!(
                periods = c.periods,
                paid = c.paid,
                minted = %c.minted,
                "closed minting periods"
            ),
            Ok(_) => {}
            Err(e) => tracing::error!(error = %svclog::error_chain(&e), "closing periods failed"),
        }
    }
}
