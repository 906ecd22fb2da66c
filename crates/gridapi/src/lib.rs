//! The registry's HTTP contract: its paths, the answers it gives and the error codes it
//! uses. The registry answers with these types and every client (the `grid` CLI, the node
//! agent, the lab and the benchmarks) reads them, so a renamed field breaks the build, not a
//! farmer's node at run time.
//!
//! Signed requests themselves (envelopes and payloads) are `gridtypes`; this crate is what
//! comes back.

use gridtypes::{ResourceTotals, Resources, Units};

pub mod ledger;
pub use ledger::{
    BalanceView, EntryView, PeriodFilter, PeriodView, PolicyView, PostingView, PriceView,
    TransactionView,
};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// How long a client keeps an idle connection to the registry for reuse: below the
/// registry's own idle timeout (30 s by default), so a client never sends a request on a
/// connection the server is closing at that moment (the request would fail with "connection
/// closed before message completed").
pub const CLIENT_POOL_IDLE: std::time::Duration = std::time::Duration::from_secs(20);

/// Paths of the API, relative to the registry's base URL.
pub mod paths {
    /// Twins: POST a signed `RegisterTwin`, GET the list.
    pub const TWINS: &str = "/api/v1/twins";
    /// Farms: POST a signed `CreateFarm`, GET the list.
    pub const FARMS: &str = "/api/v1/farms";
    /// Nodes: POST a signed `RegisterNode`, GET the list.
    pub const NODES: &str = "/api/v1/nodes";
    /// Node reports: POST a signed `Report`.
    pub const REPORTS: &str = "/api/v1/reports";
    /// Grid-wide totals.
    pub const STATS: &str = "/api/v1/stats";
    /// Contracts: POST a signed `CreateContract`, GET the list.
    pub const CONTRACTS: &str = "/api/v1/contracts";
    /// POST a signed `CancelContract`.
    pub const CONTRACTS_CANCEL: &str = "/api/v1/contracts/cancel";
    /// A twin POSTs a signed `Deploy` (a deployment sealed to the node).
    pub const MAILBOX: &str = "/api/v1/mailbox";
    /// A node POSTs a signed `PollMailbox`; the answer is a [`crate::MailboxPage`].
    pub const MAILBOX_POLL: &str = "/api/v1/mailbox/poll";
    /// A node POSTs a signed `DeploymentStatus` (sealed to the twin).
    pub const MAILBOX_STATUS: &str = "/api/v1/mailbox/status";
    /// A twin POSTs a signed `RequestLogs` (sealed to the node).
    pub const MAILBOX_LOG_REQUEST: &str = "/api/v1/mailbox/logs/request";
    /// A node POSTs a signed `Logs` (its answer, sealed to the twin).
    pub const MAILBOX_LOGS: &str = "/api/v1/mailbox/logs";
    /// Closed minting periods with their rewards: `GET` lists, `GET /{id}` has the receipt.
    pub const PERIODS: &str = "/api/v1/periods";
    /// Ledger accounts: `GET /{account}` is the balance, `GET /{account}/entries` the history.
    pub const LEDGER_ACCOUNTS: &str = "/api/v1/ledger/accounts";
    /// Ledger transactions: `GET /{id}`.
    pub const LEDGER_TRANSACTIONS: &str = "/api/v1/ledger/transactions";
    /// Farming policies.
    pub const POLICIES: &str = "/api/v1/policies";
    /// The TFT price history.
    pub const PRICES: &str = "/api/v1/prices";
    /// System extensions: `{name}` (signed manifest) and `{name}/image` (squashfs).
    pub const EXTENSIONS: &str = "/api/v1/extensions";

    /// One twin.
    pub fn twin(id: u64) -> String {
        format!("{TWINS}/{id}")
    }
    /// One farm.
    pub fn farm(id: u64) -> String {
        format!("{FARMS}/{id}")
    }
    /// One node with its latest reports.
    pub fn node(id: u64) -> String {
        format!("{NODES}/{id}")
    }
    /// A node's stored reports.
    pub fn node_reports(id: u64) -> String {
        format!("{NODES}/{id}/reports")
    }
    /// One contract.
    pub fn contract(id: u64) -> String {
        format!("{CONTRACTS}/{id}")
    }
    /// The node's latest signed status of a contract's deployment ([`crate::StatusView`]).
    pub fn contract_status(id: u64) -> String {
        format!("{CONTRACTS}/{id}/status")
    }
    /// The node's answer to the contract's latest log request ([`crate::LogsView`]).
    pub fn contract_logs(id: u64) -> String {
        format!("{CONTRACTS}/{id}/logs")
    }
}

/// The stable, machine-readable code of a refused request (`error.code` in the body).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The body or query is not of the expected shape (400).
    Malformed,
    /// The body or the signed payload is larger than allowed (413).
    TooLarge,
    /// A write without `Content-Type: application/json` (415).
    UnsupportedMediaType,
    /// The key already has the other role: a key is a twin or a node, never both (409).
    RoleConflict,
    /// Too many requests from this address or key; see `Retry-After` (429).
    RateLimited,
    /// The registry's write queue is full; see `Retry-After` (503).
    Busy,
    /// The request was not completed in time (408).
    Timeout,
    /// The signature does not verify or the signer is not a valid key (401).
    BadSignature,
    /// The signer is not in the phonebook in the role the request needs (401).
    UnknownSigner,
    /// The signed timestamp is outside the accepted window (401).
    StaleTimestamp,
    /// The (signer, nonce) pair was already accepted (409).
    Replay,
    /// The payload names a farm that does not exist (422).
    UnknownFarm,
    /// The payload names a node that does not exist (422).
    UnknownNode,
    /// The node has less free capacity than the contract asks for (409).
    InsufficientCapacity,
    /// The signer may not act on this (e.g. another twin's contract) (403).
    Forbidden,
    /// A payload of another kind was sent to this endpoint (400).
    WrongKind,
    /// A unique name is taken, or the contract is no longer active (409).
    Conflict,
    /// A deployment or status version older than (or as old as) the one stored (409).
    StaleVersion,
    /// The thing asked for does not exist (404).
    NotFound,
    /// The registry's database failed (500).
    Database,
    /// The registry is shutting down or its writer stopped; see `Retry-After` (503).
    Unavailable,
    /// Boot media for a farm could not be built (500): the release folder is damaged or a
    /// tool failed; nothing was cached.
    BuildFailed,
    /// A code this client does not know (a newer registry).
    #[serde(other)]
    Unknown,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Malformed => "malformed",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::UnsupportedMediaType => "unsupported_media_type",
            ErrorCode::RoleConflict => "role_conflict",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Busy => "busy",
            ErrorCode::Timeout => "timeout",
            ErrorCode::BadSignature => "bad_signature",
            ErrorCode::UnknownSigner => "unknown_signer",
            ErrorCode::StaleTimestamp => "stale_timestamp",
            ErrorCode::Replay => "replay",
            ErrorCode::UnknownFarm => "unknown_farm",
            ErrorCode::UnknownNode => "unknown_node",
            ErrorCode::InsufficientCapacity => "insufficient_capacity",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::WrongKind => "wrong_kind",
            ErrorCode::Conflict => "conflict",
            ErrorCode::StaleVersion => "stale_version",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Database => "database",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::BuildFailed => "build_failed",
            ErrorCode::Unknown => "unknown",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The body of every refused request: `{"error": {"code": …, "message": …}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    /// What went wrong.
    pub error: ErrorDetail,
}

/// The code and the human-readable message of a refusal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorDetail {
    /// Stable code, for programs.
    pub code: ErrorCode,
    /// What was wrong with the request, naming the input, for people.
    pub message: String,
}

/// What a committed write produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Written {
    /// The id of the twin, farm, node or report.
    pub id: i64,
    /// False when the request only confirmed something that already existed.
    pub created: bool,
}

/// A page of results with the cursor for the next one.
#[derive(Debug, Serialize, Deserialize)]
pub struct Page<T> {
    /// The items.
    pub items: Vec<T>,
    /// Pass as `after` to get the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub next: Option<i64>,
}

/// Paging parameters of the plain list endpoints.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Paging {
    /// Return items with an id greater than this.
    pub after: Option<i64>,
    /// Page size.
    pub limit: Option<i64>,
}

/// A twin in the phonebook.
#[derive(Debug, Serialize, Deserialize)]
pub struct TwinView {
    /// Twin id.
    pub id: i64,
    /// ed25519 public key, hex.
    pub public_key: String,
    /// When it registered (Unix seconds).
    pub created_at: i64,
}

/// A farm and how many nodes it has.
#[derive(Debug, Serialize, Deserialize)]
pub struct FarmView {
    /// Farm id.
    pub id: i64,
    /// Unique name.
    pub name: String,
    /// Owning twin.
    pub twin_id: i64,
    /// Nodes registered in the farm.
    pub nodes: i64,
    /// When it was created (Unix seconds).
    pub created_at: i64,
}

/// Whether a node reported recently enough to count as up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeStatus {
    /// Last report within the up window.
    Up,
    /// No report within the up window (as a filter: every node that is not up).
    Down,
    /// Its last message said it was shutting down in order.
    Stopped,
}

impl NodeStatus {
    /// The status as it appears on the wire and in `?status=`.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeStatus::Up => "up",
            NodeStatus::Down => "down",
            NodeStatus::Stopped => "stopped",
        }
    }
}

impl std::fmt::Display for NodeStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A node as auditors see it.
#[derive(Debug, Serialize, Deserialize)]
pub struct NodeView {
    /// Node id.
    pub id: i64,
    /// The node's own ed25519 key, hex.
    pub public_key: String,
    /// Farm it belongs to.
    pub farm_id: i64,
    /// Up or down by last report age.
    pub status: NodeStatus,
    /// DMI serial.
    pub serial: Option<String>,
    /// Runs inside a hypervisor.
    pub virtualized: bool,
    /// Network interfaces as registered (the stored JSON, passed through as is).
    pub interfaces: Box<RawValue>,
    /// Agent version.
    pub agent_version: Option<String>,
    /// The X25519 key deployments are sealed to (`gridtypes::mailbox`); none from agents
    /// that take no deployments.
    #[serde(default)]
    pub box_key: Option<String>,
    /// Total raw capacity.
    pub capacity: Resources,
    /// Reserved by workloads.
    pub used: Resources,
    /// Capacity minus used.
    pub free: Resources,
    /// Farming units of the total capacity.
    pub units: Units,
    /// Last reported uptime.
    pub uptime_secs: i64,
    /// Public traffic reported so far.
    pub traffic_bytes: i64,
    /// First registration (Unix seconds).
    pub registered_at: i64,
    /// Last capacity change or registration.
    pub updated_at: i64,
    /// Last message of any kind.
    pub last_seen: i64,
    /// Latest reports, newest first (only on the single-node endpoint).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub reports: Option<Vec<ReportView>>,
}

/// Filters of the node list.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeFilter {
    /// Only nodes of this farm.
    pub farm: Option<i64>,
    /// Only up or only down nodes.
    pub status: Option<NodeStatus>,
    /// At least this many free cores.
    pub min_cru: Option<i64>,
    /// At least this many free bytes of memory.
    pub min_mru: Option<i64>,
    /// At least this many free bytes of SSD.
    pub min_sru: Option<i64>,
    /// At least this many free bytes of HDD.
    pub min_hru: Option<i64>,
    /// Nodes with an id greater than this.
    pub after: Option<i64>,
    /// Page size.
    pub limit: Option<i64>,
}

/// A stored report: the envelope exactly as the node sent it, so anyone can re-verify it.
#[derive(Debug, Serialize, Deserialize)]
pub struct ReportView {
    /// Report id.
    pub id: i64,
    /// uptime, capacity or consumption.
    pub kind: String,
    /// The node's timestamp.
    pub signed_at: i64,
    /// The registry's clock when it was stored.
    pub received_at: i64,
    /// The signed envelope, verbatim.
    pub envelope: Box<RawValue>,
}

/// Kinds of signed node messages the registry keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StoredKind {
    /// A (re-)registration.
    Registration,
    /// An uptime report.
    Uptime,
    /// A capacity report.
    Capacity,
    /// A consumption report.
    Consumption,
}

/// Filters of a node's report list.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReportFilter {
    /// Only reports of this kind.
    pub kind: Option<StoredKind>,
    /// Reports with an id greater than this.
    pub after: Option<i64>,
    /// Page size.
    pub limit: Option<i64>,
}

/// Totals over a set of nodes.
#[derive(Debug, Serialize, Deserialize)]
pub struct Totals {
    /// Number of nodes.
    pub nodes: i64,
    /// Summed raw capacity (128-bit: no number of nodes overflows it).
    pub capacity: ResourceTotals,
    /// Summed farming units (each node's CU/SU, added up).
    pub units: Units,
}

/// Grid-wide figures.
#[derive(Debug, Serialize, Deserialize)]
pub struct Stats {
    /// Registered twins.
    pub twins: i64,
    /// Farms.
    pub farms: i64,
    /// Stored reports.
    pub reports: i64,
    /// Seconds without a report after which a node counts as down.
    pub up_window_secs: i64,
    /// Nodes that reported within the up window.
    pub up: Totals,
    /// Every registered node.
    pub all: Totals,
}

impl StoredKind {
    /// The kind's name in URLs and in the database.
    pub fn as_str(self) -> &'static str {
        match self {
            StoredKind::Registration => "registration",
            StoredKind::Uptime => "uptime",
            StoredKind::Capacity => "capacity",
            StoredKind::Consumption => "consumption",
        }
    }
}

/// Whether a contract still holds its capacity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContractState {
    /// Reserved: the node runs what the twin deploys under it.
    Active,
    /// Ended by the twin: the capacity is free again and the node tears the workloads down.
    Cancelled,
}

impl ContractState {
    /// The state as stored and written on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ContractState::Active => "active",
            ContractState::Cancelled => "cancelled",
        }
    }
}

impl std::str::FromStr for ContractState {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "active" => Ok(ContractState::Active),
            "cancelled" => Ok(ContractState::Cancelled),
            other => Err(format!("unknown contract state {other:?}")),
        }
    }
}

impl std::fmt::Display for ContractState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A twin's reservation on a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContractView {
    /// Contract id.
    pub id: i64,
    /// The twin that pays.
    pub twin_id: i64,
    /// The node that runs the workloads.
    pub node_id: i64,
    /// What is reserved.
    pub resources: Resources,
    /// Active or cancelled.
    pub state: ContractState,
    /// When it was created (Unix seconds, the registry's clock).
    pub created_at: i64,
    /// When it was cancelled.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub cancelled_at: Option<i64>,
    /// The newest deployment version the twin posted (its content is sealed to the node).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub deployment_version: Option<i64>,
    /// The deployment version the node's latest status describes.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub status_version: Option<i64>,
    /// The number of the twin's latest log request (the next must be larger).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub log_request: Option<i64>,
    /// Billed up to this time (Unix seconds).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub billed_until: Option<i64>,
    /// Set while the twin cannot pay: the contract runs on until `grace_ends`, then it is
    /// cancelled unless the twin's balance covers its bill by then.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub grace_since: Option<i64>,
    /// When the grace ends (with `grace_since`).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub grace_ends: Option<i64>,
}

/// One contract in a node's mailbox: what the node must run under it, if anything.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailboxItem {
    /// The contract.
    pub contract_id: i64,
    /// The mailbox revision of its last change (the cursor the node polls after).
    pub rev: i64,
    /// Active, or cancelled: then the node tears down what ran under it.
    pub state: ContractState,
    /// The twin that owns it.
    pub twin_id: i64,
    /// That twin's ed25519 key, hex: the only key whose deployments the node takes.
    pub twin_key: String,
    /// What the contract reserved.
    pub resources: Resources,
    /// The twin's newest signed `Deploy` envelope, byte for byte as the twin sent it
    /// (the node checks the twin's signature itself), base64; none before the first.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_b64")]
    pub deployment: Option<Vec<u8>>,
    /// The twin's signed `RequestLogs` envelope, verbatim, base64, while the node has not
    /// answered it.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_b64")]
    pub log_request: Option<Vec<u8>>,
}

/// The answer to a mailbox poll: contracts changed since the node's cursor, oldest change
/// first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MailboxPage {
    /// Changed contracts, by `rev`.
    pub items: Vec<MailboxItem>,
    /// What to poll after next: the last item's `rev`, or the cursor sent when none.
    pub rev: i64,
    /// More changes wait: poll again at once.
    pub more: bool,
}

/// A node's latest status of a contract's deployment, for the twin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusView {
    /// The contract.
    pub contract_id: i64,
    /// The node that signed it.
    pub node_id: i64,
    /// That node's ed25519 key, hex (the twin checks the envelope against it).
    pub node_key: String,
    /// The node's signed `DeploymentStatus` envelope, byte for byte, base64.
    #[serde(with = "gridtypes::envelope::b64")]
    pub envelope: Vec<u8>,
}

/// The node's answer to a contract's log request, for the twin.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogsView {
    /// The contract.
    pub contract_id: i64,
    /// The request this answers.
    pub request: i64,
    /// The node that signed it.
    pub node_id: i64,
    /// That node's ed25519 key, hex.
    pub node_key: String,
    /// The node's signed `Logs` envelope, byte for byte, base64.
    #[serde(with = "gridtypes::envelope::b64")]
    pub envelope: Vec<u8>,
}

/// `Option<Vec<u8>>` as an optional base64 string.
mod opt_b64 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => gridtypes::envelope::b64::serialize(v, s),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<u8>>, D::Error> {
        #[derive(Deserialize)]
        struct W(#[serde(with = "gridtypes::envelope::b64")] Vec<u8>);
        Ok(Option::<W>::deserialize(d)?.map(|w| w.0))
    }
}

/// Filters of the contract list.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContractFilter {
    /// Only this twin's contracts.
    pub twin: Option<i64>,
    /// Only contracts on this node.
    pub node: Option<i64>,
    /// Only active or only cancelled ones.
    pub state: Option<ContractState>,
    /// Contracts with an id greater than this.
    pub after: Option<i64>,
    /// Page size.
    pub limit: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_match_their_wire_names() {
        for code in [
            ErrorCode::Malformed,
            ErrorCode::TooLarge,
            ErrorCode::UnsupportedMediaType,
            ErrorCode::RoleConflict,
            ErrorCode::RateLimited,
            ErrorCode::Busy,
            ErrorCode::Timeout,
            ErrorCode::BadSignature,
            ErrorCode::UnknownSigner,
            ErrorCode::StaleTimestamp,
            ErrorCode::Replay,
            ErrorCode::UnknownFarm,
            ErrorCode::UnknownNode,
            ErrorCode::InsufficientCapacity,
            ErrorCode::Forbidden,
            ErrorCode::WrongKind,
            ErrorCode::Conflict,
            ErrorCode::NotFound,
            ErrorCode::Database,
            ErrorCode::Unavailable,
        ] {
            let wire = serde_json::to_string(&code).unwrap_or_default();
            assert_eq!(wire, format!("\"{}\"", code.as_str()));
            let back: ErrorCode = serde_json::from_str(&wire).unwrap_or(ErrorCode::Unknown);
            assert_eq!(back, code);
        }
        let newer: ErrorCode =
            serde_json::from_str("\"quota_exceeded\"").unwrap_or(ErrorCode::Malformed);
        assert_eq!(newer, ErrorCode::Unknown);
    }

    #[test]
    fn views_refuse_nothing_they_print_and_read_back() {
        let body = r#"{"error":{"code":"replay","message":"nonce used"}}"#;
        let e: ErrorBody = serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(e.error.code, ErrorCode::Replay);
        let page: Page<Written> =
            serde_json::from_str(r#"{"items":[{"id":3,"created":true}],"next":3}"#)
                .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(page.next, Some(3));
        assert_eq!(
            page.items,
            vec![Written {
                id: 3,
                created: true
            }]
        );
    }
}
