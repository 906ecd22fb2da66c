//! The TFT ledger in the database, and the operator's settings it depends on (farming
//! policies, the TFT price, deposits).
//!
//! Every transaction is checked to balance before it is written, is written with its
//! entries and the accounts' new balances in one database transaction, and carries a
//! unique reference: booking the same thing twice books it once.

use accounting::{check_balanced, Account, FarmingPolicy, Posting, Rates, Tft, Unbooked};
use gridapi::{PolicyView, PriceView};
use sqlx::{AnyConnection, Row};

use crate::db::Db;

/// Why a ledger or settings change was not made.
#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    /// The transaction does not balance.
    #[error(transparent)]
    Unbooked(#[from] Unbooked),
    /// The operator's input is out of range or names nothing.
    #[error("{0}")]
    Invalid(String),
    /// The database failed.
    #[error("database error")]
    Db(#[from] sqlx::Error),
}

/// Books a balanced transaction once: `Ok(Some(id))` when it was booked now, `Ok(None)`
/// when `reference` was booked before (nothing changes then).
pub async fn book(
    conn: &mut AnyConnection,
    reference: &str,
    kind: &str,
    memo: &str,
    postings: &[Posting],
    now: i64,
) -> Result<Option<i64>, LedgerError> {
    check_balanced(postings)?;
    let row = sqlx::query(
        "INSERT INTO ledger_transactions (ref, kind, memo, created_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (ref) DO NOTHING RETURNING id",
    )
    .bind(reference)
    .bind(kind)
    .bind(memo)
    .bind(now)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(row) = row else {
        return Ok(None);
    };
    let tx: i64 = row.try_get(0)?;
    for p in postings {
        let account = p.account.to_string();
        sqlx::query("INSERT INTO ledger_entries (tx_id, account, amount) VALUES ($1, $2, $3)")
            .bind(tx)
            .bind(&account)
            .bind(p.amount.0)
            .execute(&mut *conn)
            .await?;
        // An overflowing balance fails the statement, and with it the whole transaction.
        sqlx::query(
            "INSERT INTO ledger_balances (account, balance) VALUES ($1, $2) \
             ON CONFLICT (account) DO UPDATE SET balance = ledger_balances.balance + excluded.balance",
        )
        .bind(&account)
        .bind(p.amount.0)
        .execute(&mut *conn)
        .await?;
    }
    Ok(Some(tx))
}

/// An account's balance (zero for an account that was never booked on).
pub async fn balance(db: &Db, account: Account) -> Result<Tft, sqlx::Error> {
    let row = sqlx::query("SELECT balance FROM ledger_balances WHERE account = $1")
        .bind(account.to_string())
        .fetch_optional(&db.pool)
        .await?;
    Ok(Tft(match row {
        Some(r) => r.try_get(0)?,
        None => 0,
    }))
}

/// Longest policy name.
pub const MAX_POLICY_NAME: usize = 64;
/// Largest rate or price the operator may set: 1,000,000 USD (a typo guard, far above any
/// real rate).
pub const MAX_MICRO_USD: u64 = 1_000_000 * accounting::MICRO_USD;

/// A new farming policy.
#[derive(Debug, Clone)]
pub struct NewPolicy {
    /// Unique name.
    pub name: String,
    /// What it pays.
    pub rates: Rates,
    /// Make it the policy of farms without one.
    pub default: bool,
}

/// Creates a farming policy; returns its id.
pub async fn create_policy(db: &Db, p: &NewPolicy, now: i64) -> Result<i64, LedgerError> {
    let ok_char = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    if p.name.is_empty() || p.name.len() > MAX_POLICY_NAME || !p.name.chars().all(ok_char) {
        return Err(LedgerError::Invalid(format!(
            "policy name {:?} must be 1..={MAX_POLICY_NAME} characters of A-Z a-z 0-9 - _ .",
            p.name
        )));
    }
    let r = &p.rates;
    for (what, v) in [("cu", r.cu), ("su", r.su), ("nu", r.nu), ("ipv4", r.ipv4)] {
        if v > MAX_MICRO_USD {
            return Err(LedgerError::Invalid(format!(
                "the {what} rate {} USD is above the {} USD allowed",
                accounting::format_usd(v),
                accounting::format_usd(MAX_MICRO_USD)
            )));
        }
    }
    if r.sla_permill > 1000 {
        return Err(LedgerError::Invalid(format!(
            "an SLA of {} permill is more than the whole period (1000)",
            r.sla_permill
        )));
    }
    let mut tx = db.begin_write().await?;
    let taken = sqlx::query("SELECT id FROM farming_policies WHERE name = $1")
        .bind(&p.name)
        .fetch_optional(&mut *tx)
        .await?;
    if taken.is_some() {
        return Err(LedgerError::Invalid(format!(
            "a policy named {:?} exists already (policies never change: make one with a new name)",
            p.name
        )));
    }
    let id: i64 = sqlx::query(
        "INSERT INTO farming_policies (name, cu, su, nu, ipv4, sla_permill, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
    )
    .bind(&p.name)
    .bind(r.cu as i64)
    .bind(r.su as i64)
    .bind(r.nu as i64)
    .bind(r.ipv4 as i64)
    .bind(r.sla_permill as i64)
    .bind(now)
    .fetch_one(&mut *tx)
    .await?
    .try_get(0)?;
    if p.default {
        sqlx::query(
            "INSERT INTO default_policy (one, policy_id) VALUES (1, $1) \
             ON CONFLICT (one) DO UPDATE SET policy_id = excluded.policy_id",
        )
        .bind(id)
        .execute(&mut *tx)
        .await?;
    }
    tx.commit().await?;
    Ok(id)
}

/// Gives a farm its own policy (`None`: back to the default one).
pub async fn attach_policy(db: &Db, farm: i64, policy: Option<i64>) -> Result<(), LedgerError> {
    if let Some(p) = policy {
        let exists = sqlx::query("SELECT 1 FROM farming_policies WHERE id = $1")
            .bind(p)
            .fetch_optional(&db.pool)
            .await?;
        if exists.is_none() {
            return Err(LedgerError::Invalid(format!("policy {p} does not exist")));
        }
    }
    let changed = sqlx::query("UPDATE farms SET policy_id = $1 WHERE id = $2")
        .bind(policy)
        .bind(farm)
        .execute(&db.pool)
        .await?
        .rows_affected();
    if changed == 0 {
        return Err(LedgerError::Invalid(format!("farm {farm} does not exist")));
    }
    Ok(())
}

/// Sets the TFT price from `now` on.
pub async fn set_price(db: &Db, micro_usd: u64, now: i64) -> Result<i64, LedgerError> {
    if micro_usd == 0 || micro_usd > MAX_MICRO_USD {
        return Err(LedgerError::Invalid(format!(
            "a TFT price must be above 0 and at most {} USD",
            accounting::format_usd(MAX_MICRO_USD)
        )));
    }
    Ok(
        sqlx::query("INSERT INTO tft_prices (micro_usd, set_at) VALUES ($1, $2) RETURNING id")
            .bind(micro_usd as i64)
            .bind(now)
            .fetch_one(&db.pool)
            .await?
            .try_get(0)?,
    )
}

/// Credits a twin with TFT brought in from outside the grid. `reference` names the outside
/// transfer (a payment id): the same reference is credited once, however often it is sent.
pub async fn deposit(
    db: &Db,
    twin: i64,
    amount: Tft,
    reference: &str,
    now: i64,
) -> Result<Option<i64>, LedgerError> {
    if amount.0 <= 0 {
        return Err(LedgerError::Invalid(
            "a deposit must be more than 0 TFT".into(),
        ));
    }
    if reference.is_empty() || reference.len() > 128 || reference.chars().any(char::is_control) {
        return Err(LedgerError::Invalid(
            "a deposit reference is 1..=128 printable characters".into(),
        ));
    }
    let mut tx = db.begin_write().await?;
    let exists = sqlx::query("SELECT 1 FROM twins WHERE id = $1")
        .bind(twin)
        .fetch_optional(&mut *tx)
        .await?;
    if exists.is_none() {
        return Err(LedgerError::Invalid(format!("twin {twin} does not exist")));
    }
    let memo = serde_json::json!({ "twin": twin, "amount": amount, "reference": reference });
    let postings = accounting::transfer(Account::Deposits, Account::Twin(twin), amount);
    let id = book(
        &mut tx,
        &format!("deposit:{reference}"),
        "deposit",
        &memo.to_string(),
        &postings,
        now,
    )
    .await?;
    tx.commit().await?;
    Ok(id)
}

/// The farming policies, the default one marked.
pub async fn policies(db: &Db) -> Result<Vec<PolicyView>, sqlx::Error> {
    let rows = sqlx::query(
        "SELECT p.id, p.name, p.cu, p.su, p.nu, p.ipv4, p.sla_permill, p.created_at, \
         (SELECT COUNT(*) FROM default_policy d WHERE d.policy_id = p.id) AS dflt \
         FROM farming_policies p ORDER BY p.id",
    )
    .fetch_all(&db.pool)
    .await?;
    let u = |r: &sqlx::any::AnyRow, c: &str| -> Result<u64, sqlx::Error> {
        Ok(r.try_get::<i64, _>(c)?.max(0) as u64)
    };
    rows.iter()
        .map(|r| {
            Ok(PolicyView {
                policy: FarmingPolicy {
                    id: r.try_get("id")?,
                    name: r.try_get("name")?,
                    rates: Rates {
                        cu: u(r, "cu")?,
                        su: u(r, "su")?,
                        nu: u(r, "nu")?,
                        ipv4: u(r, "ipv4")?,
                        sla_permill: u(r, "sla_permill")?,
                    },
                },
                default: r.try_get::<i64, _>("dflt")? > 0,
                created_at: r.try_get("created_at")?,
            })
        })
        .collect()
}

/// The TFT price history, oldest first.
pub async fn prices(db: &Db) -> Result<Vec<PriceView>, sqlx::Error> {
    let rows = sqlx::query("SELECT id, micro_usd, set_at FROM tft_prices ORDER BY set_at, id")
        .fetch_all(&db.pool)
        .await?;
    rows.iter()
        .map(|r| {
            Ok(PriceView {
                id: r.try_get("id")?,
                micro_usd: r.try_get::<i64, _>("micro_usd")?.max(0) as u64,
                set_at: r.try_get("set_at")?,
            })
        })
        .collect()
}
