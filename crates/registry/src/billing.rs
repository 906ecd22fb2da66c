//! Billing: each contract is charged per hour for what it reserves and the public traffic
//! its node reported for it, from its twin to the farm that runs it. A twin that cannot pay
//! gets a grace period; when it ends unpaid, the contract is cancelled and the node tears
//! its workloads down (it learns so from its mailbox, as for a twin's own cancellation).

use std::time::Duration;

use accounting::{bill, Account, BillInput, Pricing, Tft};
use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::db::{resources, Db};
use crate::ledger::{self, LedgerError, MAX_MICRO_USD};
use crate::writer::{cancel_contract, ContractRow};

/// One hour: contracts are billed in whole hours while they run.
pub const HOUR: i64 = 3600;
/// Most hours one round bills a contract (a registry that was off for longer catches up
/// over several rounds).
const MAX_HOURS: i64 = 24 * 31;

/// When contracts are billed (`grid-registry serve --bill-every --grace`).
#[derive(Debug, Clone, Copy)]
pub struct BillingConfig {
    /// How often the server bills what is due (`None`: only `grid-registry bill`).
    pub every: Option<Duration>,
    /// How long a contract whose twin cannot pay keeps running before it is cancelled.
    pub grace_secs: i64,
}

impl Default for BillingConfig {
    fn default() -> Self {
        BillingConfig {
            every: Some(Duration::from_secs(300)),
            grace_secs: 24 * 3600,
        }
    }
}

/// What one billing round did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Billed {
    /// Bills booked.
    pub bills: u64,
    /// TFT moved from twins to farms.
    pub charged: Tft,
    /// Contracts that entered their grace period.
    pub graced: u64,
    /// Contracts whose twin paid again after a grace period began.
    pub resumed: u64,
    /// Contracts cancelled because the grace ended unpaid.
    pub cancelled: u64,
}

/// Sets what twins pay from now on.
pub async fn set_pricing(db: &Db, p: Pricing, now: i64) -> Result<i64, LedgerError> {
    for (what, v) in [("cu", p.cu), ("su", p.su), ("nu", p.nu), ("ipv4", p.ipv4)] {
        if v > MAX_MICRO_USD {
            return Err(LedgerError::Invalid(format!(
                "the {what} price {} USD is above the {} USD allowed",
                accounting::format_usd(v),
                accounting::format_usd(MAX_MICRO_USD)
            )));
        }
    }
    Ok(sqlx::query(
        "INSERT INTO billing_prices (cu, su, nu, ipv4, set_at) VALUES ($1, $2, $3, $4, $5) RETURNING id",
    )
    .bind(p.cu as i64)
    .bind(p.su as i64)
    .bind(p.nu as i64)
    .bind(p.ipv4 as i64)
    .bind(now)
    .fetch_one(&db.pool)
    .await?
    .try_get(0)?)
}

/// The prices in force, if the operator set any.
pub async fn pricing(db: &Db) -> Result<Option<Pricing>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT cu, su, nu, ipv4 FROM billing_prices ORDER BY set_at DESC, id DESC LIMIT 1",
    )
    .fetch_optional(&db.pool)
    .await?;
    let Some(r) = row else { return Ok(None) };
    let u = |c: &str| -> Result<u64, sqlx::Error> { Ok(r.try_get::<i64, _>(c)?.max(0) as u64) };
    Ok(Some(Pricing {
        cu: u("cu")?,
        su: u("su")?,
        nu: u("nu")?,
        ipv4: u("ipv4")?,
    }))
}

struct Due {
    row: ContractRow,
    twin: i64,
    farm_twin: i64,
    billed_until: i64,
    traffic: i64,
    grace_since: Option<i64>,
    cancelled_at: Option<i64>,
}

fn due(r: &AnyRow) -> Result<Due, sqlx::Error> {
    Ok(Due {
        row: ContractRow {
            id: r.try_get("id")?,
            node_id: r.try_get("node_id")?,
            resources: resources(r, "")?,
        },
        twin: r.try_get("twin_id")?,
        farm_twin: r.try_get("farm_twin")?,
        billed_until: r.try_get("billed_until")?,
        traffic: r.try_get("traffic_unbilled")?,
        grace_since: r.try_get("grace_since")?,
        cancelled_at: r.try_get("cancelled_at")?,
    })
}

/// Bills every contract that is due at `now`: active ones for each whole hour since they
/// were last billed, cancelled ones for the rest of their last hour.
pub async fn bill_due(db: &Db, now: i64, grace_secs: i64) -> Result<Billed, LedgerError> {
    let mut done = Billed::default();
    let Some(pricing) = pricing(db).await? else {
        return Ok(done);
    };
    let prices = ledger::prices(db).await?;
    let Some(price) = prices.last().map(|p| p.micro_usd) else {
        return Ok(done);
    };
    // Time before there were both prices and a TFT price is not billed afterwards: a
    // contract older than the operator's first prices pays from then on.
    let first_priced: i64 = sqlx::query("SELECT MIN(set_at) FROM billing_prices")
        .fetch_one(&db.pool)
        .await?
        .try_get::<Option<i64>, _>(0)?
        .unwrap_or(now);
    let billable_from = first_priced.max(prices.first().map_or(now, |p| p.set_at));
    let rows = sqlx::query(
        "SELECT c.id, c.twin_id, c.node_id, c.cru, c.mru, c.sru, c.hru, c.ipv4, c.billed_until, \
            c.traffic_unbilled, c.grace_since, c.cancelled_at, f.twin_id AS farm_twin \
         FROM contracts c JOIN nodes n ON n.id = c.node_id JOIN farms f ON f.id = n.farm_id \
         WHERE (c.state = 'active' AND c.billed_until <= $1) \
            OR (c.state = 'cancelled' AND c.billed_until < c.cancelled_at) \
         ORDER BY c.id",
    )
    .bind(now - HOUR)
    .fetch_all(&db.pool)
    .await?;
    for r in &rows {
        let d = due(r)?;
        let from = d.billed_until.max(billable_from);
        let to = match d.cancelled_at {
            Some(end) => end.max(from),
            None => {
                let hours = ((now - from) / HOUR).clamp(0, MAX_HOURS);
                from + hours * HOUR
            }
        };
        if to <= from && d.cancelled_at.is_none() {
            continue;
        }
        bill_one(db, &d, from, to, pricing, price, now, grace_secs, &mut done).await?;
    }
    Ok(done)
}

#[allow(clippy::too_many_arguments)]
async fn bill_one(
    db: &Db,
    d: &Due,
    from: i64,
    to: i64,
    pricing: Pricing,
    price: u64,
    now: i64,
    grace_secs: i64,
    done: &mut Billed,
) -> Result<(), LedgerError> {
    let line = bill(BillInput {
        contract_id: d.row.id,
        from,
        to,
        reserved: d.row.resources,
        traffic_bytes: d.traffic.max(0) as u64,
        pricing,
        price,
    });
    let mut tx = db.begin_write().await?;
    // Another replica may have billed it since it was read: the row decides.
    let current: Option<i64> = sqlx::query(&format!(
        "SELECT billed_until FROM contracts WHERE id = $1{}",
        db.backend.row_lock()
    ))
    .bind(d.row.id)
    .fetch_optional(&mut *tx)
    .await?
    .map(|r| r.try_get(0))
    .transpose()?;
    if current != Some(d.billed_until) {
        return Ok(());
    }
    let balance = ledger_balance(&mut tx, d.twin).await?;
    if line.tft.0 == 0 || balance >= line.tft.0 {
        if line.tft.0 > 0 {
            let memo =
                serde_json::to_string(&line).map_err(|e| LedgerError::Invalid(e.to_string()))?;
            let postings =
                accounting::transfer(Account::Twin(d.twin), Account::Twin(d.farm_twin), line.tft);
            let reference = format!("bill:contract:{}:until:{to}", d.row.id);
            if ledger::book(&mut tx, &reference, "bill", &memo, &postings, now)
                .await?
                .is_some()
            {
                done.bills += 1;
                done.charged = Tft(done.charged.0.saturating_add(line.tft.0));
            }
        }
        settle(&mut tx, d, to).await?;
        if d.grace_since.is_some() {
            done.resumed += 1;
        }
    } else if d.cancelled_at.is_some() {
        // The twin cancelled and cannot pay the last part hour: it is written off, and said.
        tracing::warn!(
            contract = d.row.id,
            twin = d.twin,
            owed = %line.tft,
            "the last bill of a cancelled contract is not covered by its twin's balance; written off"
        );
        settle(&mut tx, d, to).await?;
    } else {
        match d.grace_since {
            None => {
                sqlx::query("UPDATE contracts SET grace_since = $1 WHERE id = $2")
                    .bind(now)
                    .bind(d.row.id)
                    .execute(&mut *tx)
                    .await?;
                done.graced += 1;
            }
            Some(since) if now >= since.saturating_add(grace_secs) => {
                match cancel_contract(&mut tx, db.backend, d.row.clone(), now).await? {
                    Ok(_) => done.cancelled += 1,
                    Err(e) => {
                        tracing::warn!(contract = d.row.id, error = %e, "cancelling an unpaid contract failed")
                    }
                }
            }
            Some(_) => {}
        }
    }
    tx.commit().await?;
    Ok(())
}

/// Marks `d` billed up to `to`: the traffic billed leaves the waiting total, and a grace
/// period ends.
async fn settle(conn: &mut sqlx::AnyConnection, d: &Due, to: i64) -> Result<(), sqlx::Error> {
    sqlx::query(
        "UPDATE contracts SET billed_until = $1, traffic_unbilled = traffic_unbilled - $2, \
         grace_since = NULL WHERE id = $3",
    )
    .bind(to)
    .bind(d.traffic)
    .bind(d.row.id)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn ledger_balance(conn: &mut sqlx::AnyConnection, twin: i64) -> Result<i64, sqlx::Error> {
    Ok(
        match sqlx::query("SELECT balance FROM ledger_balances WHERE account = $1")
            .bind(Account::Twin(twin).to_string())
            .fetch_optional(&mut *conn)
            .await?
        {
            Some(r) => r.try_get(0)?,
            None => 0,
        },
    )
}

/// Bills due contracts every `every` until the process ends; failures are logged.
pub async fn run(db: Db, every: Duration, grace_secs: i64) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match bill_due(&db, gridtypes::now(), grace_secs).await {
            Ok(b) if b != Billed::default() => tracing::info!(
                bills = b.bills,
                charged = %b.charged,
                graced = b.graced,
                resumed = b.resumed,
                cancelled = b.cancelled,
                "billed contracts"
            ),
            Ok(_) => {}
            Err(e) => tracing::error!(error = %svclog::error_chain(&e), "billing failed"),
        }
    }
}
