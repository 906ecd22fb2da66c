//! Rewards, prices and the TFT ledger as auditors read them (`/api/v1/periods`,
//! `/api/v1/ledger/...`, `/api/v1/policies`, `/api/v1/prices`).

use accounting::{Account, FarmingPolicy, Receipt, Tft};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// A farming policy.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PolicyView {
    /// Its id, name and rates.
    #[serde(flatten)]
    pub policy: FarmingPolicy,
    /// Whether farms without a policy of their own use it.
    pub default: bool,
    /// When it was made.
    pub created_at: i64,
}

/// A TFT price the operator set.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PriceView {
    /// Price id.
    pub id: i64,
    /// µUSD per TFT.
    pub micro_usd: u64,
    /// When it took effect.
    pub set_at: i64,
}

/// One closed period of one node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeriodView {
    /// Period row id (the list's cursor).
    pub id: i64,
    /// The node.
    pub node_id: i64,
    /// The period's number, from 0 at the node's first registration.
    pub index: u64,
    /// First second of the period.
    pub start: i64,
    /// First second after it.
    pub end: i64,
    /// The farm credited.
    pub farm_id: i64,
    /// Seconds the node proved it was up.
    pub up_secs: i64,
    /// Uptime reports in the period.
    pub reports: u64,
    /// paid, below_sla, violation, virtualized, no_policy or no_price.
    pub outcome: String,
    /// Earned, µUSD.
    pub usd: u64,
    /// Earned, TFT.
    pub tft: Tft,
    /// The ledger transaction that paid it (none when nothing was earned).
    pub tx_id: Option<i64>,
    /// When the registry closed it.
    pub closed_at: i64,
    /// Every input and figure (only when one period is asked for).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt: Option<Receipt>,
}

/// Filters of the period list.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeriodFilter {
    /// Only this node's periods.
    pub node: Option<i64>,
    /// Only this farm's.
    pub farm: Option<i64>,
    /// Periods with a row id greater than this.
    pub after: Option<i64>,
    /// Page size.
    pub limit: Option<i64>,
}

/// An account's balance.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct BalanceView {
    /// The account.
    pub account: Account,
    /// Its balance (the sum of its entries).
    pub balance: Tft,
    /// Entries booked on it.
    pub entries: i64,
}

/// One entry of an account's history.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EntryView {
    /// Entry id (the history's cursor).
    pub id: i64,
    /// The transaction it belongs to.
    pub tx_id: i64,
    /// reward, deposit or bill.
    pub kind: String,
    /// What the transaction pays for, unique (e.g. `reward:node:3:period:0`).
    pub reference: String,
    /// The amount (negative: taken from the account).
    pub amount: Tft,
    /// When it was booked.
    pub created_at: i64,
}

/// One entry of a transaction.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PostingView {
    /// The account.
    pub account: Account,
    /// What it gained.
    pub amount: Tft,
}

/// A whole transaction.
#[derive(Debug, Serialize, Deserialize)]
pub struct TransactionView {
    /// Transaction id.
    pub id: i64,
    /// reward, deposit or bill.
    pub kind: String,
    /// What it pays for, unique.
    pub reference: String,
    /// Its receipt or note, as booked.
    pub memo: Box<RawValue>,
    /// When it was booked.
    pub created_at: i64,
    /// Its entries; they add up to zero.
    pub entries: Vec<PostingView>,
}
