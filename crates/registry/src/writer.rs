//! The single writer: applies verified requests in batched transactions (group commit).
//!
//! Signature checks run in parallel in the request handlers; every write then goes through
//! this one task, which commits many requests per transaction. A request is answered only
//! after its transaction committed, so an acknowledged report is on disk, and SQLite never
//! sees two writers fighting over its lock.

use std::time::Duration;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use gridapi::ContractState;
use gridtypes::{
    now, ContractRequest, NodeRegistration, Payload, Report, Resources, Sealed, Verified,
    MAX_CLOCK_SKEW_SECS,
};
use sqlx::{AnyConnection, Row};
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};

use crate::db::{resources, Backend, Db};
use crate::error::ApiError;
pub use gridapi::Written;

/// Most requests committed in one transaction.
const MAX_BATCH: usize = 512;
/// Requests waiting for the writer before handlers get back-pressure (the queue is bounded
/// in bytes too, by the writer's semaphore).
const QUEUE_DEPTH: usize = 8192;
/// How often stale nonces are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(60);

struct Job {
    verified: Verified,
    raw: Vec<u8>,
    reply: oneshot::Sender<Result<Written, ApiError>>,
    /// The job's bytes in the queue's budget, given back when the job is dropped.
    _bytes: OwnedSemaphorePermit,
}

/// Handle to the writer task.
#[derive(Debug, Clone)]
pub struct Writer {
    tx: mpsc::Sender<Job>,
    /// One permit per byte of request that may wait for the writer.
    bytes: Arc<Semaphore>,
    /// Counts committed batches that changed some node's mailbox: mailbox polls wait on it.
    mailbox: watch::Receiver<u64>,
}

impl Writer {
    /// Starts the writer task on `db`, holding at most `queue_bytes` of waiting requests.
    pub fn spawn(db: Db, queue_bytes: usize) -> Writer {
        let (tx, rx) = mpsc::channel(QUEUE_DEPTH);
        let (changed, mailbox) = watch::channel(0);
        tokio::spawn(run(db, rx, changed));
        let permits = queue_bytes.min(Semaphore::MAX_PERMITS);
        Writer {
            tx,
            bytes: Arc::new(Semaphore::new(permits)),
            mailbox,
        }
    }

    /// Changes whenever a committed batch touched a mailbox (a contract created or
    /// cancelled, a deployment posted). Another registry process on the same PostgreSQL
    /// does not tick it: a poll also looks again every few seconds.
    pub fn mailbox_changes(&self) -> watch::Receiver<u64> {
        self.mailbox.clone()
    }

    /// Applies a verified request and waits until it is committed; answers `busy` at once
    /// when the queue already holds its budget of bytes.
    pub async fn write(&self, verified: Verified, raw: Vec<u8>) -> Result<Written, ApiError> {
        let n = u32::try_from(raw.len().max(1)).map_err(|_| ApiError::Busy)?;
        let permit = self
            .bytes
            .clone()
            .try_acquire_many_owned(n)
            .map_err(|_| ApiError::Busy)?;
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Job {
                verified,
                raw,
                reply,
                _bytes: permit,
            })
            .await
            .map_err(|_| ApiError::Unavailable("writer stopped".into()))?;
        rx.await
            .map_err(|_| ApiError::Unavailable("writer dropped the request".into()))?
    }
}

/// Node ids by public key. Nodes are never deleted and re-registration keeps the id, so an
/// entry stays true; it only saves the writer a lookup per uptime report.
type NodeIds = std::collections::HashMap<String, i64>;

/// Entries kept in [`NodeIds`] before it is emptied (about 150 MB).
const MAX_CACHED_NODES: usize = 1_000_000;

async fn run(db: Db, mut rx: mpsc::Receiver<Job>, mailbox: watch::Sender<u64>) {
    let mut node_ids = NodeIds::new();
    let mut prune = tokio::time::interval(PRUNE_EVERY);
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        tokio::select! {
            n = rx.recv_many(&mut batch, MAX_BATCH) => {
                if n == 0 {
                    return;
                }
                if node_ids.len() > MAX_CACHED_NODES {
                    node_ids.clear();
                }
                commit_batch(&db, &mut node_ids, &mut batch, &mailbox).await;
            }
            _ = prune.tick() => {
                let horizon = now() - 2 * MAX_CLOCK_SKEW_SECS;
                if let Err(e) = sqlx::query("DELETE FROM nonces WHERE ts < $1")
                    .bind(horizon)
                    .execute(&db.pool)
                    .await
                {
                    tracing::warn!(error = &e as &dyn std::error::Error, "pruning nonces failed");
                }
            }
        }
    }
}

/// Commits `batch` in one transaction; if the transaction fails, retries each job alone
/// so one poisoned request cannot fail the others.
async fn commit_batch(
    db: &Db,
    node_ids: &mut NodeIds,
    batch: &mut Vec<Job>,
    mailbox: &watch::Sender<u64>,
) {
    let result = apply_all(db, node_ids, batch).await;
    if result.is_err() {
        // Ids learnt inside a transaction that rolled back may name nodes that do not exist.
        node_ids.clear();
    }
    match result {
        Ok(results) => {
            let mut mail = false;
            for (job, result) in batch.drain(..).zip(results) {
                mail |= result.is_ok()
                    && matches!(
                        job.verified.payload,
                        Payload::Deploy(_)
                            | Payload::RequestLogs(_)
                            | Payload::CreateContract(_)
                            | Payload::CancelContract { .. }
                    );
                let _ = job.reply.send(result);
            }
            if mail {
                mailbox.send_modify(|n| *n = n.wrapping_add(1));
            }
        }
        Err(e) if batch.len() == 1 => {
            if let Some(job) = batch.pop() {
                let _ = job.reply.send(Err(ApiError::Database(e)));
            }
        }
        Err(e) => {
            tracing::warn!(
                error = &e as &dyn std::error::Error,
                jobs = batch.len(),
                "batch failed, retrying one by one"
            );
            for job in std::mem::take(batch) {
                let mut one = vec![job];
                Box::pin(commit_batch(db, node_ids, &mut one, mailbox)).await;
            }
        }
    }
}

async fn apply_all(
    db: &Db,
    node_ids: &mut NodeIds,
    batch: &[Job],
) -> Result<Vec<Result<Written, ApiError>>, sqlx::Error> {
    let mut tx = db.begin_write().await?;
    let now = now();
    let mut results: Vec<Option<Result<Written, ApiError>>> = batch.iter().map(|_| None).collect();
    // Uptime reports are nearly all the traffic: they are applied with a few statements per
    // batch. Everything else (registrations, capacity changes) goes one by one, first, so a
    // node registered in this batch can already report in it.
    let mut uptimes = Vec::new();
    for (i, job) in batch.iter().enumerate() {
        match &job.verified.payload {
            Payload::Report(Report::Uptime {
                uptime_secs,
                stopping,
                ..
            }) => uptimes.push((i, *uptime_secs, *stopping)),
            _ => results[i] = Some(apply(&mut tx, db.backend, job, now).await?),
        }
    }
    for chunk in uptimes.chunks(UPTIME_CHUNK) {
        bulk_uptime(
            &mut tx,
            db.backend,
            node_ids,
            batch,
            chunk,
            now,
            &mut results,
        )
        .await?;
    }
    tx.commit().await?;
    Ok(results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(ApiError::Unavailable("request was not applied".into()))))
        .collect())
}

/// Uptime reports applied per statement in [`bulk_uptime`] (bounded by bind-parameter limits).
const UPTIME_CHUNK: usize = 256;

/// Placeholders for `rows` rows of `cols` columns, numbered from `first` on PostgreSQL.
///
/// SQLite gets anonymous `?`s: its lookup of numbered names is linear per parameter, which
/// made large batches quadratic.
fn values(backend: Backend, rows: usize, cols: usize, first: usize) -> String {
    let mut out = String::with_capacity(rows * cols * 6);
    for r in 0..rows {
        if r > 0 {
            out.push_str(", ");
        }
        out.push('(');
        for c in 0..cols {
            if c > 0 {
                out.push_str(", ");
            }
            match backend {
                Backend::Sqlite => out.push('?'),
                Backend::Postgres => out.push_str(&format!("${}", first + r * cols + c)),
            }
        }
        out.push(')');
    }
    out
}

/// An uptime report of a batch that passed the checks: its job's index, its node, and what
/// it says (uptime, stopping).
type LiveUptime = (usize, i64, (u64, bool));

/// Applies many uptime reports with a handful of statements instead of four per report.
async fn bulk_uptime(
    conn: &mut AnyConnection,
    backend: Backend,
    node_ids: &mut NodeIds,
    batch: &[Job],
    chunk: &[(usize, u64, bool)],
    now: i64,
    results: &mut [Option<Result<Written, ApiError>>],
) -> Result<(), sqlx::Error> {
    learn_node_ids(conn, backend, node_ids, batch, chunk).await?;
    let mut used = used_nonces(conn, backend, batch, chunk).await?;
    // Unknown signers and replays (copies inside this batch too) are refused here, the same
    // errors as the one-by-one path gives.
    let mut live: Vec<LiveUptime> = Vec::with_capacity(chunk.len());
    for &(i, uptime, stopping) in chunk {
        let v = &batch[i].verified;
        match node_ids.get(&v.signer_hex) {
            None => results[i] = Some(Err(unknown_node(&v.signer_hex))),
            Some(&node) => {
                if used.insert((v.timestamp, v.signer_hex.clone(), v.nonce.clone())) {
                    live.push((i, node, (uptime, stopping)));
                } else {
                    results[i] = Some(Err(replay(v)));
                }
            }
        }
    }
    if live.is_empty() {
        return Ok(());
    }
    let ids = store_uptimes(conn, backend, batch, &live, now).await?;
    let mut latest: HashMap<i64, (u64, bool)> = HashMap::new();
    for ((i, node, uptime), id) in live.iter().zip(ids) {
        latest.insert(*node, *uptime);
        results[*i] = Some(Ok(Written { id, created: true }));
    }
    update_uptimes(conn, backend, &latest, now).await
}

/// Adds the node ids of the chunk's signers to `node_ids`, asking the database only for keys
/// not seen before.
async fn learn_node_ids(
    conn: &mut AnyConnection,
    backend: Backend,
    node_ids: &mut NodeIds,
    batch: &[Job],
    chunk: &[(usize, u64, bool)],
) -> Result<(), sqlx::Error> {
    let keys: Vec<&str> = chunk
        .iter()
        .map(|(i, _, _)| batch[*i].verified.signer_hex.as_str())
        .filter(|k| !node_ids.contains_key(*k))
        .collect::<HashSet<_>>()
        .into_iter()
        .collect();
    if keys.is_empty() {
        return Ok(());
    }
    let sql = format!(
        "SELECT id, public_key FROM nodes WHERE public_key IN {}",
        values(backend, 1, keys.len(), 1)
    );
    let mut q = sqlx::query(&sql);
    for k in &keys {
        q = q.bind(*k);
    }
    for row in q.fetch_all(&mut *conn).await? {
        node_ids.insert(row.try_get::<String, _>(1)?, row.try_get::<i64, _>(0)?);
    }
    Ok(())
}

/// The chunk's (timestamp, signer, nonce) keys already in the nonce table: almost always none
/// (nonces are 128 random bits). A replay carries the signed timestamp of its original, so
/// the lookup is by the whole key.
async fn used_nonces(
    conn: &mut AnyConnection,
    backend: Backend,
    batch: &[Job],
    chunk: &[(usize, u64, bool)],
) -> Result<HashSet<(i64, String, String)>, sqlx::Error> {
    let sql = format!(
        "SELECT ts, signer, nonce FROM nonces WHERE (ts, signer, nonce) IN (VALUES {})",
        values(backend, chunk.len(), 3, 1)
    );
    let mut q = sqlx::query(&sql);
    for (i, _, _) in chunk {
        let v = &batch[*i].verified;
        q = q.bind(v.timestamp).bind(&v.signer_hex).bind(&v.nonce);
    }
    let mut used = HashSet::new();
    for row in q.fetch_all(&mut *conn).await? {
        used.insert((
            row.try_get::<i64, _>(0)?,
            row.try_get::<String, _>(1)?,
            row.try_get::<String, _>(2)?,
        ));
    }
    Ok(used)
}

/// Claims the nonces of `live` and stores its reports verbatim; returns the report ids in
/// the order of `live`.
async fn store_uptimes(
    conn: &mut AnyConnection,
    backend: Backend,
    batch: &[Job],
    live: &[LiveUptime],
    now: i64,
) -> Result<Vec<i64>, sqlx::Error> {
    let sql = format!(
        "INSERT INTO nonces (signer, nonce, ts) VALUES {}",
        values(backend, live.len(), 3, 1)
    );
    let mut q = sqlx::query(&sql);
    for (i, _, _) in live {
        let v = &batch[*i].verified;
        q = q.bind(&v.signer_hex).bind(&v.nonce).bind(v.timestamp);
    }
    q.execute(&mut *conn).await?;

    let sql = format!(
        "INSERT INTO reports (node_id, kind, signed_at, received_at, nonce, envelope, reading) \
         VALUES {}{}",
        values(backend, live.len(), 7, 1),
        match backend {
            Backend::Sqlite => "",
            Backend::Postgres => " RETURNING id, node_id, nonce",
        }
    );
    let mut q = sqlx::query(&sql);
    for (i, node, (uptime, _)) in live {
        let job = &batch[*i];
        q = q
            .bind(*node)
            .bind("uptime")
            .bind(job.verified.timestamp)
            .bind(now)
            .bind(&job.verified.nonce)
            .bind(job.raw.as_slice())
            .bind(*uptime as i64);
    }
    let ids: Vec<i64> = match backend {
        // One writer holds SQLite's lock, and a multi-row INSERT numbers its rows in order:
        // the ids are the `live.len()` ones ending at the last inserted rowid.
        Backend::Sqlite => {
            q.execute(&mut *conn).await?;
            // sqlx's Any driver does not pass SQLite's last rowid through; ask for it.
            let last: i64 = sqlx::query("SELECT last_insert_rowid()")
                .fetch_one(&mut *conn)
                .await?
                .try_get(0)?;
            let first = last - live.len() as i64 + 1;
            (first..=last).collect()
        }
        // PostgreSQL does not promise RETURNING order: match rows by (node, nonce).
        Backend::Postgres => {
            let mut by_key = HashMap::new();
            for r in q.fetch_all(&mut *conn).await? {
                let key = (r.try_get::<i64, _>(1)?, r.try_get::<String, _>(2)?);
                by_key.insert(key, r.try_get::<i64, _>(0)?);
            }
            live.iter()
                .filter_map(|(i, node, _)| {
                    by_key
                        .get(&(*node, batch[*i].verified.nonce.clone()))
                        .copied()
                })
                .collect()
        }
    };
    if ids.len() != live.len() {
        return Err(sqlx::Error::Protocol(format!(
            "{} report ids for {} reports",
            ids.len(),
            live.len()
        )));
    }
    Ok(ids)
}

/// Sets each node's latest uptime, whether it said it is stopping, and its last-seen time.
async fn update_uptimes(
    conn: &mut AnyConnection,
    backend: Backend,
    latest: &HashMap<i64, (u64, bool)>,
    now: i64,
) -> Result<(), sqlx::Error> {
    let sql = format!(
        "WITH v(id, up, stop) AS (VALUES {}) \
         UPDATE nodes SET uptime_secs = v.up, stopping = v.stop, last_seen = {} \
         FROM v WHERE nodes.id = v.id",
        values(backend, latest.len(), 3, 1),
        match backend {
            Backend::Sqlite => "?".to_string(),
            Backend::Postgres => format!("${}", 3 * latest.len() + 1),
        }
    );
    let mut q = sqlx::query(&sql);
    for (node, (uptime, stopping)) in latest {
        q = q
            .bind(*node)
            .bind(*uptime as i64)
            .bind(i64::from(*stopping));
    }
    q.bind(now).execute(&mut *conn).await?;
    Ok(())
}

/// The refusal of a message whose (timestamp, signer, nonce) was accepted before.
fn replay(v: &Verified) -> ApiError {
    ApiError::Replay {
        signer: v.signer_hex.clone(),
        nonce: v.nonce.clone(),
    }
}

/// The refusal of a node message from a key that is not a registered node.
pub(crate) fn unknown_node(key: &str) -> ApiError {
    ApiError::UnknownSigner(format!(
        "{key} is not a registered node: register with POST {} first",
        gridapi::paths::NODES
    ))
}

/// Applies one job. The outer `Err` is a database failure (the transaction is lost);
/// the inner one is the request's own fault and leaves the transaction usable.
async fn apply(
    conn: &mut AnyConnection,
    backend: Backend,
    job: &Job,
    now: i64,
) -> Result<Result<Written, ApiError>, sqlx::Error> {
    let v = &job.verified;
    // Look the signer up before claiming the nonce, so a refused request changes nothing.
    macro_rules! check {
        ($e:expr) => {
            match $e.await? {
                Ok(x) => x,
                Err(e) => return Ok(Err(e)),
            }
        };
    }
    enum Ctx {
        Nothing,
        Twin(i64),
        Node(Option<NodeState>),
        Contract { twin: i64, node: NodeState },
        Cancel(ContractRow),
        Mail(MailRow),
    }
    let ctx = match &v.payload {
        Payload::RegisterTwin {} => {
            check!(not_in(conn, "nodes", &v.signer_hex, "node", "twin"));
            Ctx::Nothing
        }
        Payload::CreateFarm { .. } => Ctx::Twin(check!(twin_id(conn, &v.signer_hex))),
        Payload::RegisterNode(reg) => {
            check!(not_in(conn, "twins", &v.signer_hex, "twin", "node"));
            check!(farm_exists(conn, reg.farm_id as i64));
            Ctx::Node(node_by_key(conn, &v.signer_hex).await?.ok())
        }
        Payload::Report(report) => {
            let node = check!(node_by_key(conn, &v.signer_hex));
            if let Report::Consumption(c) = report {
                check!(traffic_targets(conn, node.id, c));
            }
            Ctx::Node(Some(node))
        }
        Payload::CreateContract(req) => {
            let twin = check!(twin_id(conn, &v.signer_hex));
            let node = check!(node_with_room(conn, backend, req));
            Ctx::Contract { twin, node }
        }
        Payload::CancelContract { contract_id } => {
            let twin = check!(twin_id(conn, &v.signer_hex));
            Ctx::Cancel(check!(cancellable(conn, backend, twin, *contract_id)))
        }
        Payload::Deploy(s) => {
            let twin = check!(twin_id(conn, &v.signer_hex));
            Ctx::Mail(check!(deployable(conn, backend, twin, s)))
        }
        Payload::DeploymentStatus(s) => {
            let node = check!(node_by_key(conn, &v.signer_hex));
            Ctx::Mail(check!(status_target(
                conn,
                backend,
                node.id,
                s,
                v.timestamp
            )))
        }
        Payload::RequestLogs(s) => {
            let twin = check!(twin_id(conn, &v.signer_hex));
            Ctx::Mail(check!(log_requestable(conn, backend, twin, s)))
        }
        Payload::Logs(s) => {
            let node = check!(node_by_key(conn, &v.signer_hex));
            Ctx::Mail(check!(log_answerable(conn, backend, node.id, s)))
        }
        // Polls are reads: the API answers them without the writer.
        Payload::PollMailbox { .. } => {
            return Ok(Err(ApiError::WrongKind {
                expected: "a write",
                got: "poll_mailbox",
            }))
        }
    };
    let claimed = sqlx::query(
        "INSERT INTO nonces (signer, nonce, ts) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING",
    )
    .bind(&v.signer_hex)
    .bind(&v.nonce)
    .bind(v.timestamp)
    .execute(&mut *conn)
    .await?
    .rows_affected();
    if claimed == 0 {
        return Ok(Err(replay(v)));
    }
    match (&v.payload, ctx) {
        (Payload::RegisterTwin {}, _) => register_twin(conn, &v.signer_hex, &job.raw, now).await,
        (Payload::CreateFarm { name }, Ctx::Twin(twin)) => {
            create_farm(conn, twin, name, &job.raw, now).await
        }
        (Payload::RegisterNode(reg), Ctx::Node(existing)) => {
            register_node(conn, job, existing, reg, now).await
        }
        (Payload::Report(report), Ctx::Node(Some(node))) => {
            store_report(conn, job, node, report, now).await
        }
        (Payload::CreateContract(req), Ctx::Contract { twin, node }) => {
            create_contract(conn, twin, node, req, &job.raw, now).await
        }
        (Payload::CancelContract { .. }, Ctx::Cancel(contract)) => {
            cancel_contract(conn, backend, contract, now).await
        }
        (Payload::Deploy(s), Ctx::Mail(row)) => {
            let columns = ("deployment_version", "deployment");
            store_twin_mail(conn, row, s, &job.raw, columns).await
        }
        (Payload::RequestLogs(s), Ctx::Mail(row)) => {
            let columns = ("log_request_id", "log_request");
            store_twin_mail(conn, row, s, &job.raw, columns).await
        }
        (Payload::Logs(s), Ctx::Mail(row)) => store_log_answer(conn, row, s, &job.raw).await,
        (Payload::DeploymentStatus(s), Ctx::Mail(row)) => {
            store_status(conn, row, s, v.timestamp, &job.raw).await
        }
        _ => Ok(Err(ApiError::Unavailable(
            "internal: request context does not match payload".into(),
        ))),
    }
}

async fn twin_id(
    conn: &mut AnyConnection,
    key: &str,
) -> Result<Result<i64, ApiError>, sqlx::Error> {
    let row = sqlx::query("SELECT id FROM twins WHERE public_key = $1")
        .bind(key)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(match row {
        Some(r) => Ok(r.try_get(0)?),
        None => Err(ApiError::UnknownSigner(format!(
            "{key} is not a registered twin: run `grid twin register` first"
        ))),
    })
}

/// Refuses a key that `table` already holds: a key is a twin or a node, never both, so one
/// stolen or shared key cannot act in two roles.
async fn not_in(
    conn: &mut AnyConnection,
    table: &str,
    key: &str,
    is: &str,
    wants: &str,
) -> Result<Result<(), ApiError>, sqlx::Error> {
    let row = sqlx::query(&format!("SELECT id FROM {table} WHERE public_key = $1"))
        .bind(key)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(match row {
        None => Ok(()),
        Some(r) => Err(ApiError::RoleConflict(format!(
            "key {key} is already {is} {}: a key is a twin or a node, never both; use a new key for the {wants}",
            r.try_get::<i64, _>(0)?
        ))),
    })
}

async fn farm_exists(
    conn: &mut AnyConnection,
    farm: i64,
) -> Result<Result<(), ApiError>, sqlx::Error> {
    let row = sqlx::query("SELECT id FROM farms WHERE id = $1")
        .bind(farm)
        .fetch_optional(&mut *conn)
        .await?;
    Ok(row.map(|_| ()).ok_or(ApiError::UnknownFarm(farm)))
}

/// What the writer needs to know of a node to update it.
struct NodeState {
    id: i64,
    capacity: Resources,
    used: Resources,
}

/// Refuses a consumption report that names a contract not on the reporting node: a node
/// bills traffic to its own contracts only. Cancelled ones count (their last traffic).
async fn traffic_targets(
    conn: &mut AnyConnection,
    node: i64,
    c: &gridtypes::Consumption,
) -> Result<Result<(), ApiError>, sqlx::Error> {
    for t in &c.contracts {
        let on = sqlx::query("SELECT node_id FROM contracts WHERE id = $1")
            .bind(t.contract_id as i64)
            .fetch_optional(&mut *conn)
            .await?;
        match on {
            Some(r) if r.try_get::<i64, _>(0)? == node => {}
            Some(_) => {
                return Ok(Err(ApiError::Forbidden(format!(
                    "contract {} is not on this node: a node reports traffic for its own contracts only",
                    t.contract_id
                ))))
            }
            None => return Ok(Err(no_contract(t.contract_id))),
        }
    }
    Ok(Ok(()))
}

async fn node_by_key(
    conn: &mut AnyConnection,
    key: &str,
) -> Result<Result<NodeState, ApiError>, sqlx::Error> {
    let row = sqlx::query(
        "SELECT id, cru, mru, sru, hru, ipv4, used_cru, used_mru, used_sru, used_hru, used_ipv4 \
         FROM nodes WHERE public_key = $1",
    )
    .bind(key)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(match row {
        Some(r) => Ok(NodeState {
            id: r.try_get("id")?,
            capacity: resources(&r, "")?,
            used: resources(&r, "used_")?,
        }),
        None => Err(unknown_node(key)),
    })
}

/// Node `id`'s capacity and what its contracts use, locked for the rest of the transaction
/// (see [`Backend::row_lock`]).
async fn locked_node(
    conn: &mut AnyConnection,
    backend: Backend,
    id: i64,
) -> Result<Option<NodeState>, sqlx::Error> {
    let row = sqlx::query(&format!(
        "SELECT id, cru, mru, sru, hru, ipv4, used_cru, used_mru, used_sru, used_hru, used_ipv4 \
         FROM nodes WHERE id = $1{}",
        backend.row_lock()
    ))
    .bind(id)
    .fetch_optional(&mut *conn)
    .await?;
    row.map(|r| {
        Ok(NodeState {
            id: r.try_get("id")?,
            capacity: resources(&r, "")?,
            used: resources(&r, "used_")?,
        })
    })
    .transpose()
}

/// The node a contract asks for, locked, when its free capacity holds the request.
async fn node_with_room(
    conn: &mut AnyConnection,
    backend: Backend,
    req: &ContractRequest,
) -> Result<Result<NodeState, ApiError>, sqlx::Error> {
    let Some(node) = locked_node(conn, backend, req.node_id as i64).await? else {
        return Ok(Err(ApiError::UnknownNode(req.node_id as i64)));
    };
    let free = node.capacity.saturating_sub(&node.used);
    let short = req.resources.exceeding(&free);
    if !short.is_empty() {
        return Ok(Err(ApiError::InsufficientCapacity(format!(
            "node {} cannot hold this contract: it asks for more {} than is free \
             (asked {:?}, free {:?})",
            node.id,
            short.join(", "),
            req.resources,
            free
        ))));
    }
    Ok(Ok(node))
}

/// A contract that `twin` may cancel.
#[derive(Clone)]
pub(crate) struct ContractRow {
    pub(crate) id: i64,
    pub(crate) node_id: i64,
    pub(crate) resources: Resources,
}

async fn cancellable(
    conn: &mut AnyConnection,
    backend: Backend,
    twin: i64,
    id: u64,
) -> Result<Result<ContractRow, ApiError>, sqlx::Error> {
    let row = sqlx::query(&format!(
        "SELECT id, twin_id, node_id, state, cru, mru, sru, hru, ipv4 FROM contracts \
         WHERE id = $1{}",
        backend.row_lock()
    ))
    .bind(id as i64)
    .fetch_optional(&mut *conn)
    .await?;
    let Some(r) = row else {
        return Ok(Err(ApiError::NotFound(format!(
            "contract {id} does not exist"
        ))));
    };
    if r.try_get::<i64, _>("twin_id")? != twin {
        return Ok(Err(ApiError::Forbidden(format!(
            "contract {id} belongs to another twin"
        ))));
    }
    if r.try_get::<String, _>("state")? != ContractState::Active.as_str() {
        return Ok(Err(ApiError::Conflict(format!(
            "contract {id} is already cancelled"
        ))));
    }
    Ok(Ok(ContractRow {
        id: r.try_get("id")?,
        node_id: r.try_get("node_id")?,
        resources: resources(&r, "")?,
    }))
}

async fn create_contract(
    conn: &mut AnyConnection,
    twin: i64,
    node: NodeState,
    req: &ContractRequest,
    raw: &[u8],
    now: i64,
) -> Result<Result<Written, ApiError>, sqlx::Error> {
    let r = &req.resources;
    let rev = next_rev(conn, node.id).await?;
    let id: i64 = sqlx::query(
        "INSERT INTO contracts (twin_id, node_id, cru, mru, sru, hru, ipv4, state, envelope, \
            created_at, rev, billed_until) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $10) RETURNING id",
    )
    .bind(twin)
    .bind(node.id)
    .bind(r.cru as i64)
    .bind(r.mru as i64)
    .bind(r.sru as i64)
    .bind(r.hru as i64)
    .bind(r.ipv4 as i64)
    .bind(ContractState::Active.as_str())
    .bind(raw)
    .bind(now)
    .bind(rev)
    .fetch_one(&mut *conn)
    .await?
    .try_get(0)?;
    let used = node.used.saturating_add(r);
    set_used(conn, node.id, &node.capacity, &used).await?;
    Ok(Ok(Written { id, created: true }))
}

pub(crate) async fn cancel_contract(
    conn: &mut AnyConnection,
    backend: Backend,
    contract: ContractRow,
    now: i64,
) -> Result<Result<Written, ApiError>, sqlx::Error> {
    // The contracts table references the node: it exists.
    let node = locked_node(conn, backend, contract.node_id)
        .await?
        .ok_or(sqlx::Error::RowNotFound)?;
    let rev = next_rev(conn, node.id).await?;
    sqlx::query("UPDATE contracts SET state = $1, cancelled_at = $2, rev = $3 WHERE id = $4")
        .bind(ContractState::Cancelled.as_str())
        .bind(now)
        .bind(rev)
        .bind(contract.id)
        .execute(&mut *conn)
        .await?;
    let used = node.used.saturating_sub(&contract.resources);
    set_used(conn, node.id, &node.capacity, &used).await?;
    Ok(Ok(Written {
        id: contract.id,
        created: false,
    }))
}

/// Takes node `node`'s next mailbox revision. The UPDATE locks the node's row until the
/// transaction ends, so a node's revisions commit in the order they are taken and a poll
/// after revision `r` can never miss a change numbered below one it has seen.
async fn next_rev(conn: &mut AnyConnection, node: i64) -> Result<i64, sqlx::Error> {
    sqlx::query(
        "UPDATE nodes SET mailbox_rev = mailbox_rev + 1 WHERE id = $1 RETURNING mailbox_rev",
    )
    .bind(node)
    .fetch_one(&mut *conn)
    .await?
    .try_get(0)
}

/// A contract as its mailbox messages need it, locked for the transaction.
struct MailRow {
    id: i64,
    node_id: i64,
}

/// The contract a twin's mail (`what`) goes to: the twin's own and active, and `s.version`
/// above the number in column `numbered` (the newest taken so far).
async fn twin_mail_target(
    conn: &mut AnyConnection,
    backend: Backend,
    twin: i64,
    s: &Sealed,
    numbered: &str,
    what: &str,
) -> Result<Result<(MailRow, sqlx::any::AnyRow), ApiError>, sqlx::Error> {
    let Some(r) = mail_row(conn, backend, s.contract_id).await? else {
        return Ok(Err(no_contract(s.contract_id)));
    };
    let id = s.contract_id;
    if r.try_get::<i64, _>("twin_id")? != twin {
        return Ok(Err(ApiError::Forbidden(format!(
            "contract {id} belongs to another twin"
        ))));
    }
    if r.try_get::<String, _>("state")? != ContractState::Active.as_str() {
        return Ok(Err(ApiError::Conflict(format!(
            "contract {id} is cancelled: it takes no {what}; create a new contract with `grid contracts create`"
        ))));
    }
    if let Some(have) = r.try_get::<Option<i64>, _>(numbered)? {
        if s.version as i64 <= have {
            return Ok(Err(ApiError::StaleVersion(format!(
                "contract {id} already has {what} {have}: number the next {} or higher",
                have + 1
            ))));
        }
    }
    let row = MailRow {
        id: id as i64,
        node_id: r.try_get("node_id")?,
    };
    Ok(Ok((row, r)))
}

/// The contract a twin's deployment goes to: its own, active, and the version newer than
/// the stored one.
async fn deployable(
    conn: &mut AnyConnection,
    backend: Backend,
    twin: i64,
    s: &Sealed,
) -> Result<Result<MailRow, ApiError>, sqlx::Error> {
    let found = twin_mail_target(
        conn,
        backend,
        twin,
        s,
        "deployment_version",
        "deployment version",
    );
    Ok(found.await?.map(|(row, _)| row))
}

/// The contract a node's mail (a status, a log answer) is about, when it is on this node.
async fn node_mail_target(
    conn: &mut AnyConnection,
    backend: Backend,
    node: i64,
    s: &Sealed,
) -> Result<Result<(MailRow, sqlx::any::AnyRow), ApiError>, sqlx::Error> {
    let Some(r) = mail_row(conn, backend, s.contract_id).await? else {
        return Ok(Err(no_contract(s.contract_id)));
    };
    let id = s.contract_id;
    if r.try_get::<i64, _>("node_id")? != node {
        return Ok(Err(ApiError::Forbidden(format!(
            "contract {id} is not on node {node}"
        ))));
    }
    let row = MailRow {
        id: id as i64,
        node_id: node,
    };
    Ok(Ok((row, r)))
}

/// The contract a node's status is about: on this node, about a posted version, and not
/// older than the status stored (a status queued on the node arrives late, never first).
async fn status_target(
    conn: &mut AnyConnection,
    backend: Backend,
    node: i64,
    s: &Sealed,
    signed_at: i64,
) -> Result<Result<MailRow, ApiError>, sqlx::Error> {
    let (row, r) = match node_mail_target(conn, backend, node, s).await? {
        Ok(found) => found,
        Err(e) => return Ok(Err(e)),
    };
    let id = s.contract_id;
    let posted = r.try_get::<Option<i64>, _>("deployment_version")?;
    if posted.is_none_or(|p| s.version as i64 > p) {
        return Ok(Err(ApiError::Conflict(format!(
            "contract {id} has no deployment version {} (newest: {})",
            s.version,
            posted.map_or("none".into(), |p| p.to_string())
        ))));
    }
    let stored = (
        r.try_get::<Option<i64>, _>("status_version")?,
        r.try_get::<Option<i64>, _>("status_signed_at")?,
    );
    if let (Some(v), Some(t)) = stored {
        if (s.version as i64, signed_at) < (v, t) {
            return Ok(Err(ApiError::StaleVersion(format!(
                "contract {id} already has a status of version {v} signed at {t}"
            ))));
        }
    }
    Ok(Ok(row))
}

/// The contract a twin's log request goes to: its own, active, with a deployment to ask
/// about, and the request numbered above the last.
async fn log_requestable(
    conn: &mut AnyConnection,
    backend: Backend,
    twin: i64,
    s: &Sealed,
) -> Result<Result<MailRow, ApiError>, sqlx::Error> {
    let found = twin_mail_target(conn, backend, twin, s, "log_request_id", "log request");
    let (row, r) = match found.await? {
        Ok(found) => found,
        Err(e) => return Ok(Err(e)),
    };
    if r.try_get::<Option<i64>, _>("deployment_version")?.is_none() {
        return Ok(Err(ApiError::Conflict(format!(
            "contract {} has no deployment yet: nothing has output to read",
            row.id
        ))));
    }
    Ok(Ok(row))
}

/// The contract a node's log answer is for: on this node, and the request it answers the
/// one outstanding (an answer to a replaced request has nobody waiting for it).
async fn log_answerable(
    conn: &mut AnyConnection,
    backend: Backend,
    node: i64,
    s: &Sealed,
) -> Result<Result<MailRow, ApiError>, sqlx::Error> {
    let (row, r) = match node_mail_target(conn, backend, node, s).await? {
        Ok(found) => found,
        Err(e) => return Ok(Err(e)),
    };
    let id = s.contract_id;
    let answers = s.version as i64;
    match r.try_get::<Option<i64>, _>("log_request_id")? {
        Some(asked) if asked == answers => {}
        Some(asked) if answers < asked => {
            return Ok(Err(ApiError::StaleVersion(format!(
                "contract {id}'s log request {answers} was replaced by request {asked}"
            ))))
        }
        asked => {
            return Ok(Err(ApiError::Conflict(format!(
                "contract {id} has no log request {answers} (outstanding: {})",
                asked.map_or("none".into(), |a| a.to_string())
            ))))
        }
    }
    Ok(Ok(row))
}

async fn store_log_answer(
    conn: &mut AnyConnection,
    row: MailRow,
    s: &Sealed,
    raw: &[u8],
) -> Result<Result<Written, ApiError>, sqlx::Error> {
    sqlx::query("UPDATE contracts SET log_answer_id = $1, log_answer = $2 WHERE id = $3")
        .bind(s.version as i64)
        .bind(raw)
        .bind(row.id)
        .execute(&mut *conn)
        .await?;
    Ok(Ok(Written {
        id: row.id,
        created: true,
    }))
}

fn no_contract(id: u64) -> ApiError {
    ApiError::NotFound(format!("contract {id} does not exist"))
}

async fn mail_row(
    conn: &mut AnyConnection,
    backend: Backend,
    id: u64,
) -> Result<Option<sqlx::any::AnyRow>, sqlx::Error> {
    sqlx::query(&format!(
        "SELECT twin_id, node_id, state, deployment_version, status_version, status_signed_at, \
            log_request_id FROM contracts WHERE id = $1{}",
        backend.row_lock()
    ))
    .bind(id as i64)
    .fetch_optional(&mut *conn)
    .await
}

/// Stores a twin's envelope `raw` (a deployment or a log request) in column `envelope` and
/// its number in column `number`, and takes the node's next mailbox revision: the node's
/// long poll wakes and the mail reaches it at once.
async fn store_twin_mail(
    conn: &mut AnyConnection,
    row: MailRow,
    s: &Sealed,
    raw: &[u8],
    (number, envelope): (&str, &str),
) -> Result<Result<Written, ApiError>, sqlx::Error> {
    let rev = next_rev(conn, row.node_id).await?;
    sqlx::query(&format!(
        "UPDATE contracts SET {number} = $1, {envelope} = $2, rev = $3 WHERE id = $4"
    ))
    .bind(s.version as i64)
    .bind(raw)
    .bind(rev)
    .bind(row.id)
    .execute(&mut *conn)
    .await?;
    Ok(Ok(Written {
        id: row.id,
        created: true,
    }))
}

async fn store_status(
    conn: &mut AnyConnection,
    row: MailRow,
    s: &Sealed,
    signed_at: i64,
    raw: &[u8],
) -> Result<Result<Written, ApiError>, sqlx::Error> {
    sqlx::query(
        "UPDATE contracts SET status_version = $1, status_signed_at = $2, status = $3 \
         WHERE id = $4",
    )
    .bind(s.version as i64)
    .bind(signed_at)
    .bind(raw)
    .bind(row.id)
    .execute(&mut *conn)
    .await?;
    Ok(Ok(Written {
        id: row.id,
        created: true,
    }))
}

/// Sets what a node's contracts use and what is left free.
async fn set_used(
    conn: &mut AnyConnection,
    node: i64,
    capacity: &Resources,
    used: &Resources,
) -> Result<(), sqlx::Error> {
    let free = capacity.saturating_sub(used);
    sqlx::query(
        "UPDATE nodes SET used_cru = $1, used_mru = $2, used_sru = $3, used_hru = $4, \
            used_ipv4 = $5, free_cru = $6, free_mru = $7, free_sru = $8, free_hru = $9 \
         WHERE id = $10",
    )
    .bind(used.cru as i64)
    .bind(used.mru as i64)
    .bind(used.sru as i64)
    .bind(used.hru as i64)
    .bind(used.ipv4 as i64)
    .bind(free.cru as i64)
    .bind(free.mru as i64)
    .bind(free.sru as i64)
    .bind(free.hru as i64)
    .bind(node)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn register_twin(
    conn: &mut AnyConnection,
    key: &str,
    raw: &[u8],
    now: i64,
) -> Result<Result<Written, ApiError>, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO twins (public_key, envelope, created_at) VALUES ($1, $2, $3) \
         ON CONFLICT (public_key) DO NOTHING RETURNING id",
    )
    .bind(key)
    .bind(raw)
    .bind(now)
    .fetch_optional(&mut *conn)
    .await?;
    if let Some(row) = inserted {
        return Ok(Ok(Written {
            id: row.try_get(0)?,
            created: true,
        }));
    }
    Ok(twin_id(conn, key)
        .await?
        .map(|id| Written { id, created: false }))
}

async fn create_farm(
    conn: &mut AnyConnection,
    twin: i64,
    name: &str,
    raw: &[u8],
    now: i64,
) -> Result<Result<Written, ApiError>, sqlx::Error> {
    let inserted = sqlx::query(
        "INSERT INTO farms (name, twin_id, envelope, created_at) VALUES ($1, $2, $3, $4) \
         ON CONFLICT DO NOTHING RETURNING id",
    )
    .bind(name)
    .bind(twin)
    .bind(raw)
    .bind(now)
    .fetch_optional(&mut *conn)
    .await?;
    Ok(match inserted {
        Some(row) => Ok(Written {
            id: row.try_get(0)?,
            created: true,
        }),
        None => Err(ApiError::Conflict(format!(
            "farm name {name:?} is already taken (names are unique regardless of case)"
        ))),
    })
}

async fn register_node(
    conn: &mut AnyConnection,
    job: &Job,
    existing: Option<NodeState>,
    reg: &NodeRegistration,
    now: i64,
) -> Result<Result<Written, ApiError>, sqlx::Error> {
    let v = &job.verified;
    let interfaces = serde_json::to_string(&reg.interfaces).unwrap_or_else(|_| "[]".into());
    // Identity first (a new node starts empty), then capacity the same way a capacity report
    // sets it, keeping whatever workloads already use.
    let row = sqlx::query(
        "INSERT INTO nodes (public_key, farm_id, serial, virtualized, interfaces, agent_version, \
            box_key, cru, mru, sru, hru, ipv4, free_cru, free_mru, free_sru, free_hru, cu, su, \
            registered_at, updated_at, last_seen, connected_at, connected_cru, connected_mru, \
            connected_sru, connected_hru, connected_ipv4) \
         VALUES ($1, $2, $3, $4, $5, $6, $8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0.0, 0.0, $7, $7, $7, \
            $9, $10, $11, $12, $13, $14) \
         ON CONFLICT (public_key) DO UPDATE SET farm_id = excluded.farm_id, \
            serial = excluded.serial, virtualized = excluded.virtualized, \
            interfaces = excluded.interfaces, agent_version = excluded.agent_version, \
            box_key = excluded.box_key \
         RETURNING id",
    )
    .bind(&v.signer_hex)
    .bind(reg.farm_id as i64)
    .bind(reg.serial.as_deref())
    .bind(reg.virtualized as i64)
    .bind(interfaces)
    .bind(reg.agent_version.as_deref())
    .bind(now)
    .bind(reg.box_key.as_deref())
    // What the node connected with: its periods count from the signed time, and it is
    // never rewarded for more than this capacity (kept on re-registration).
    .bind(v.timestamp)
    .bind(reg.capacity.cru as i64)
    .bind(reg.capacity.mru as i64)
    .bind(reg.capacity.sru as i64)
    .bind(reg.capacity.hru as i64)
    .bind(reg.capacity.ipv4 as i64)
    .fetch_one(&mut *conn)
    .await?;
    let id: i64 = row.try_get(0)?;
    let used = existing.as_ref().map(|n| n.used).unwrap_or_default();
    set_resources(conn, id, &reg.capacity, &used, now).await?;
    // The signed registration is kept with the reports, so its history can be audited too.
    insert_report(conn, id, "registration", job, now).await?;
    Ok(Ok(Written {
        id,
        created: existing.is_none(),
    }))
}

/// Stores one signed message of a node verbatim; returns its report id.
async fn insert_report(
    conn: &mut AnyConnection,
    node: i64,
    kind: &str,
    job: &Job,
    now: i64,
) -> Result<i64, sqlx::Error> {
    // The figure accounting sums, kept beside the envelope it came from (see 0006_ledger).
    let reading: Option<i64> = match &job.verified.payload {
        Payload::Report(Report::Uptime { uptime_secs, .. }) => Some(*uptime_secs as i64),
        Payload::Report(Report::Consumption(c)) => Some(c.traffic_bytes as i64),
        _ => None,
    };
    sqlx::query(
        "INSERT INTO reports (node_id, kind, signed_at, received_at, nonce, envelope, reading) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
    )
    .bind(node)
    .bind(kind)
    .bind(job.verified.timestamp)
    .bind(now)
    .bind(&job.verified.nonce)
    .bind(job.raw.as_slice())
    .bind(reading)
    .fetch_one(&mut *conn)
    .await?
    .try_get(0)
}

async fn store_report(
    conn: &mut AnyConnection,
    job: &Job,
    node: NodeState,
    report: &Report,
    now: i64,
) -> Result<Result<Written, ApiError>, sqlx::Error> {
    let report_id = insert_report(conn, node.id, report.kind().as_str(), job, now).await?;
    match report {
        Report::Uptime {
            uptime_secs,
            stopping,
            ..
        } => {
            sqlx::query(
                "UPDATE nodes SET uptime_secs = $1, stopping = $2, last_seen = $3 WHERE id = $4",
            )
            .bind(*uptime_secs as i64)
            .bind(i64::from(*stopping))
            .bind(now)
            .bind(node.id)
            .execute(&mut *conn)
            .await?;
        }
        Report::Capacity { capacity, .. } => {
            set_resources(conn, node.id, capacity, &node.used, now).await?;
        }
        Report::Consumption(c) => {
            // What a node says its workloads use is kept in the stored report; what counts
            // as used on the node is the registry's own contracts.
            // Saturating: a total can never leave the 64-bit integer range (on SQLite it
            // would silently turn into a REAL and break every read of the row).
            sqlx::query(
                "UPDATE nodes SET traffic_bytes = CASE WHEN traffic_bytes > $1 - $2 THEN $1 \
                 ELSE traffic_bytes + $2 END WHERE id = $3",
            )
            .bind(i64::MAX)
            .bind(c.traffic_bytes as i64)
            .bind(node.id)
            .execute(&mut *conn)
            .await?;
            // Each contract's share waits for its next bill.
            for t in &c.contracts {
                sqlx::query(
                    "UPDATE contracts SET traffic_unbilled = CASE WHEN traffic_unbilled > $1 - $2 \
                     THEN $1 ELSE traffic_unbilled + $2 END WHERE id = $3 AND node_id = $4",
                )
                .bind(i64::MAX)
                .bind(t.traffic_bytes as i64)
                .bind(t.contract_id as i64)
                .bind(node.id)
                .execute(&mut *conn)
                .await?;
            }
        }
    }
    Ok(Ok(Written {
        id: report_id,
        created: true,
    }))
}

async fn set_resources(
    conn: &mut AnyConnection,
    node: i64,
    capacity: &Resources,
    used: &Resources,
    now: i64,
) -> Result<(), sqlx::Error> {
    let free = capacity.saturating_sub(used);
    let units = capacity.farming_units();
    sqlx::query(
        "UPDATE nodes SET cru = $1, mru = $2, sru = $3, hru = $4, ipv4 = $5, \
            used_cru = $6, used_mru = $7, used_sru = $8, used_hru = $9, used_ipv4 = $10, \
            free_cru = $11, free_mru = $12, free_sru = $13, free_hru = $14, cu = $15, su = $16, \
            updated_at = $17, last_seen = $17, stopping = 0 WHERE id = $18",
    )
    .bind(capacity.cru as i64)
    .bind(capacity.mru as i64)
    .bind(capacity.sru as i64)
    .bind(capacity.hru as i64)
    .bind(capacity.ipv4 as i64)
    .bind(used.cru as i64)
    .bind(used.mru as i64)
    .bind(used.sru as i64)
    .bind(used.hru as i64)
    .bind(used.ipv4 as i64)
    .bind(free.cru as i64)
    .bind(free.mru as i64)
    .bind(free.sru as i64)
    .bind(free.hru as i64)
    .bind(units.cu)
    .bind(units.su)
    .bind(now)
    .bind(node)
    .execute(&mut *conn)
    .await?;
    Ok(())
}
