//! Auditors' reads of rewards and money: closed periods with their receipts, ledger
//! balances, histories and transactions, farming policies and TFT prices.

use std::sync::Arc;

use accounting::{Account, Receipt, Tft};
use axum::extract::{Path, State};
use axum::routing::get;
use axum::{Json, Router};
use gridapi::{
    paths, BalanceView, EntryView, Page, Paging, PeriodFilter, PeriodView, PolicyView, PostingView,
    PriceView, TransactionView,
};
use serde_json::value::RawValue;
use sqlx::any::AnyRow;
use sqlx::Row;

use crate::api::{page_limit, parse_id, AppState, Q};
use crate::error::ApiError;
use crate::ledger;

type AppResult<T> = Result<T, ApiError>;
type S = State<Arc<AppState>>;

/// The routes of this module.
pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route(paths::PERIODS, get(list_periods))
        .route(&format!("{}/{{id}}", paths::PERIODS), get(get_period))
        .route(
            &format!("{}/{{account}}", paths::LEDGER_ACCOUNTS),
            get(get_balance),
        )
        .route(
            &format!("{}/{{account}}/entries", paths::LEDGER_ACCOUNTS),
            get(list_entries),
        )
        .route(
            &format!("{}/{{id}}", paths::LEDGER_TRANSACTIONS),
            get(get_transaction),
        )
        .route(paths::POLICIES, get(list_policies))
        .route(paths::PRICES, get(list_prices))
}

const PERIOD_COLUMNS: &str = "id, node_id, idx, start_at, end_at, farm_id, up_secs, reports, \
    outcome, usd, tft, tx_id, closed_at";

fn period_view(r: &AnyRow) -> Result<PeriodView, sqlx::Error> {
    Ok(PeriodView {
        id: r.try_get("id")?,
        node_id: r.try_get("node_id")?,
        index: r.try_get::<i64, _>("idx")?.max(0) as u64,
        start: r.try_get("start_at")?,
        end: r.try_get("end_at")?,
        farm_id: r.try_get("farm_id")?,
        up_secs: r.try_get("up_secs")?,
        reports: r.try_get::<i64, _>("reports")?.max(0) as u64,
        outcome: r.try_get("outcome")?,
        usd: r.try_get::<i64, _>("usd")?.max(0) as u64,
        tft: Tft(r.try_get("tft")?),
        tx_id: r.try_get("tx_id")?,
        closed_at: r.try_get("closed_at")?,
        receipt: None,
    })
}

async fn list_periods(State(s): S, Q(f): Q<PeriodFilter>) -> AppResult<Json<Page<PeriodView>>> {
    let limit = page_limit(f.limit)?;
    let mut sql = format!("SELECT {PERIOD_COLUMNS} FROM periods WHERE id > $1");
    let mut args = vec![f.after.unwrap_or(0)];
    for (col, v) in [("node_id", f.node), ("farm_id", f.farm)] {
        if let Some(v) = v {
            args.push(v);
            sql.push_str(&format!(" AND {col} = ${}", args.len()));
        }
    }
    args.push(limit);
    sql.push_str(&format!(" ORDER BY id LIMIT ${}", args.len()));
    let mut q = sqlx::query(&sql);
    for a in args {
        q = q.bind(a);
    }
    let rows = q.fetch_all(&s.db.pool).await?;
    let items = rows
        .iter()
        .map(period_view)
        .collect::<Result<Vec<_>, _>>()?;
    let next = (items.len() as i64 == limit)
        .then(|| items.last().map(|p| p.id))
        .flatten();
    Ok(Json(Page { items, next }))
}

async fn get_period(State(s): S, Path(id): Path<String>) -> AppResult<Json<PeriodView>> {
    let id = parse_id(&id, "period")?;
    let row = sqlx::query(&format!(
        "SELECT {PERIOD_COLUMNS}, receipt FROM periods WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(&s.db.pool)
    .await?
    .ok_or_else(|| ApiError::NotFound(format!("period {id} does not exist")))?;
    let mut view = period_view(&row)?;
    let receipt: String = row.try_get("receipt")?;
    view.receipt = Some(
        serde_json::from_str::<Receipt>(&receipt)
            .map_err(|e| sqlx::Error::Decode(format!("stored receipt: {e}").into()))?,
    );
    Ok(Json(view))
}

fn parse_account(raw: &str) -> AppResult<Account> {
    raw.parse::<Account>()
        .map_err(|e| ApiError::Malformed(e.to_string()))
}

async fn get_balance(State(s): S, Path(account): Path<String>) -> AppResult<Json<BalanceView>> {
    let account = parse_account(&account)?;
    let balance = ledger::balance(&s.db, account).await?;
    let entries: i64 = sqlx::query("SELECT COUNT(*) FROM ledger_entries WHERE account = $1")
        .bind(account.to_string())
        .fetch_one(&s.db.pool)
        .await?
        .try_get(0)?;
    Ok(Json(BalanceView {
        account,
        balance,
        entries,
    }))
}

async fn list_entries(
    State(s): S,
    Path(account): Path<String>,
    Q(p): Q<Paging>,
) -> AppResult<Json<Page<EntryView>>> {
    let account = parse_account(&account)?;
    let limit = page_limit(p.limit)?;
    let rows = sqlx::query(
        "SELECT e.id, e.tx_id, e.amount, t.kind, t.ref, t.created_at \
         FROM ledger_entries e JOIN ledger_transactions t ON t.id = e.tx_id \
         WHERE e.account = $1 AND e.id > $2 ORDER BY e.id LIMIT $3",
    )
    .bind(account.to_string())
    .bind(p.after.unwrap_or(0))
    .bind(limit)
    .fetch_all(&s.db.pool)
    .await?;
    let items = rows
        .iter()
        .map(|r| {
            Ok(EntryView {
                id: r.try_get("id")?,
                tx_id: r.try_get("tx_id")?,
                kind: r.try_get("kind")?,
                reference: r.try_get("ref")?,
                amount: Tft(r.try_get("amount")?),
                created_at: r.try_get("created_at")?,
            })
        })
        .collect::<Result<Vec<_>, sqlx::Error>>()?;
    let next = (items.len() as i64 == limit)
        .then(|| items.last().map(|e| e.id))
        .flatten();
    Ok(Json(Page { items, next }))
}

async fn get_transaction(State(s): S, Path(id): Path<String>) -> AppResult<Json<TransactionView>> {
    let id = parse_id(&id, "transaction")?;
    let row = sqlx::query(
        "SELECT id, kind, ref, memo, created_at FROM ledger_transactions WHERE id = $1",
    )
    .bind(id)
    .fetch_optional(&s.db.pool)
    .await?
    .ok_or_else(|| ApiError::NotFound(format!("transaction {id} does not exist")))?;
    let entries =
        sqlx::query("SELECT account, amount FROM ledger_entries WHERE tx_id = $1 ORDER BY id")
            .bind(id)
            .fetch_all(&s.db.pool)
            .await?
            .iter()
            .map(|r| {
                let account: String = r.try_get(0)?;
                Ok(PostingView {
                    account: account.parse().map_err(
                        |e: accounting::ledger::AccountParseError| {
                            sqlx::Error::Decode(e.to_string().into())
                        },
                    )?,
                    amount: Tft(r.try_get(1)?),
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()?;
    let memo: String = row.try_get("memo")?;
    Ok(Json(TransactionView {
        id: row.try_get("id")?,
        kind: row.try_get("kind")?,
        reference: row.try_get("ref")?,
        memo: RawValue::from_string(memo)
            .map_err(|e| sqlx::Error::Decode(format!("stored memo: {e}").into()))?,
        created_at: row.try_get("created_at")?,
        entries,
    }))
}

async fn list_policies(State(s): S) -> AppResult<Json<Vec<PolicyView>>> {
    Ok(Json(ledger::policies(&s.db).await?))
}

async fn list_prices(State(s): S) -> AppResult<Json<Vec<PriceView>>> {
    Ok(Json(ledger::prices(&s.db).await?))
}
