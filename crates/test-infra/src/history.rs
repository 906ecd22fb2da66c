//! A node's signed history in the past, stored straight into a registry's database: months
//! of reports cannot be sent through the API, which takes only envelopes signed within
//! 300 s of its clock. Everything stored is a real envelope signed by the node's key at the
//! time it claims, so the registry and `grid audit` read and verify it as any other.

use ed25519_dalek::SigningKey;
use gridtypes::{Envelope, Payload, Report, Resources};
use registry::Db;
use sqlx::Row;

use crate::client::{new_key, node_registration, nonce};

/// A node seeded into the past.
pub struct SeededNode {
    /// Its id.
    pub id: i64,
    /// Its key.
    pub key: SigningKey,
}

/// Registers a new node of `farm` with `capacity` on bare metal, as if its first
/// registration was signed at `at`.
pub async fn seed_node(db: &Db, farm: i64, capacity: Resources, at: i64) -> SeededNode {
    let key = new_key();
    let mut reg = node_registration(farm, capacity);
    if let Payload::RegisterNode(r) = &mut reg {
        r.virtualized = false;
    }
    let env = Envelope::seal(&key, &reg, at, nonce());
    let mut conn = db
        .pool
        .acquire()
        .await
        .unwrap_or_else(|e| panic!("seeding a node: {e}"));
    let id = insert_node(&mut conn, &key, farm, capacity, at, at)
        .await
        .unwrap_or_else(|e| panic!("seeding a node: {e}"));
    drop(conn);
    insert(db, id, &[("registration", env, None)]).await;
    SeededNode { id, key }
}

/// Writes the row of a node with `key` in `farm` as its first registration, signed at `at`,
/// would have made it, last seen at `last_seen`; returns its id. Only the row: the signed
/// registration is [`seed_node`]'s.
pub async fn insert_node(
    conn: &mut sqlx::AnyConnection,
    key: &ed25519_dalek::SigningKey,
    farm: i64,
    capacity: Resources,
    at: i64,
    last_seen: i64,
) -> Result<i64, sqlx::Error> {
    let units = capacity.farming_units();
    let c = |v: u64| v as i64;
    sqlx::query(
        "INSERT INTO nodes (public_key, farm_id, serial, virtualized, interfaces, agent_version, \
            cru, mru, sru, hru, ipv4, free_cru, free_mru, free_sru, free_hru, cu, su, \
            registered_at, updated_at, last_seen, connected_at, connected_cru, connected_mru, \
            connected_sru, connected_hru, connected_ipv4) \
         VALUES ($1, $2, NULL, 0, '[]', NULL, $3, $4, $5, $6, $7, $3, $4, $5, $6, $8, $9, \
            $10, $10, $11, $10, $3, $4, $5, $6, $7) RETURNING id",
    )
    .bind(hex::encode(key.verifying_key().as_bytes()))
    .bind(farm)
    .bind(c(capacity.cru))
    .bind(c(capacity.mru))
    .bind(c(capacity.sru))
    .bind(c(capacity.hru))
    .bind(c(capacity.ipv4))
    .bind(units.cu)
    .bind(units.su)
    .bind(at)
    .bind(last_seen)
    .fetch_one(&mut *conn)
    .await?
    .try_get(0)
}

/// Stores `reports` (signed time, report) of `node`, each signed at its time.
pub async fn seed_reports(db: &Db, node: &SeededNode, reports: &[(i64, Report)]) {
    let rows: Vec<(&'static str, Envelope, Option<i64>)> = reports
        .iter()
        .map(|(at, r)| {
            let reading = match r {
                Report::Uptime { uptime_secs, .. } => Some(*uptime_secs as i64),
                Report::Consumption(c) => Some(c.traffic_bytes as i64),
                Report::Capacity { .. } => None,
            };
            let env = Envelope::seal(&node.key, &Payload::Report(r.clone()), *at, nonce());
            (r.kind().as_str(), env, reading)
        })
        .collect();
    insert(db, node.id, &rows).await;
    // The node's row as the writer would have left it after the newest uptime report.
    if let Some((at, Report::Uptime { uptime_secs, .. })) = reports
        .iter()
        .filter(|(_, r)| matches!(r, Report::Uptime { .. }))
        .max_by_key(|(at, _)| *at)
    {
        sqlx::query(
            "UPDATE nodes SET last_seen = $1, uptime_secs = $2 WHERE id = $3 AND last_seen < $1",
        )
        .bind(*at)
        .bind(*uptime_secs as i64)
        .bind(node.id)
        .execute(&db.pool)
        .await
        .unwrap_or_else(|e| panic!("seeding: {e}"));
    }
}

/// Rows per INSERT: within both engines' limits on bound parameters (6 per row).
const ROWS_PER_INSERT: usize = 500;

async fn insert(db: &Db, node: i64, rows: &[(&str, Envelope, Option<i64>)]) {
    let mut tx = db
        .begin_write()
        .await
        .unwrap_or_else(|e| panic!("seeding: {e}"));
    for chunk in rows.chunks(ROWS_PER_INSERT) {
        let mut sql = String::from(
            "INSERT INTO reports (node_id, kind, signed_at, received_at, nonce, envelope, reading) VALUES ",
        );
        for i in 0..chunk.len() {
            let b = i * 6;
            if i > 0 {
                sql.push_str(", ");
            }
            sql.push_str(&format!(
                "(${}, ${}, ${}, ${}, ${}, ${}, ${})",
                b + 1,
                b + 2,
                b + 3,
                b + 3,
                b + 4,
                b + 5,
                b + 6
            ));
        }
        let mut q = sqlx::query(&sql);
        for (kind, envelope, reading) in chunk {
            q = q
                .bind(node)
                .bind(*kind)
                .bind(envelope.timestamp)
                .bind(envelope.nonce.clone())
                .bind(envelope.to_json())
                .bind(*reading);
        }
        q.execute(&mut *tx)
            .await
            .unwrap_or_else(|e| panic!("seeding reports: {e}"));
    }
    tx.commit().await.unwrap_or_else(|e| panic!("seeding: {e}"));
}

/// Asserts the ledger's invariants: every transaction sums to zero, every balance is the sum
/// of its entries, and all balances sum to zero.
pub async fn assert_ledger_balanced(db: &Db) {
    let one = |sql: &'static str| async move {
        sqlx::query(sql)
            .fetch_one(&db.pool)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .try_get::<Option<i64>, _>(0)
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
            .unwrap_or(0)
    };
    let unbalanced = one(
        "SELECT COUNT(*) FROM (SELECT tx_id FROM ledger_entries GROUP BY tx_id \
         HAVING SUM(amount) <> 0) u",
    )
    .await;
    assert_eq!(unbalanced, 0, "transactions that do not balance");
    let drift = one("SELECT COUNT(*) FROM ledger_balances b WHERE b.balance <> \
         (SELECT CAST(SUM(e.amount) AS BIGINT) FROM ledger_entries e WHERE e.account = b.account)")
    .await;
    assert_eq!(drift, 0, "balances that are not the sum of their entries");
    let total = one("SELECT CAST(SUM(balance) AS BIGINT) FROM ledger_balances").await;
    assert_eq!(total, 0, "the balances do not add up to zero");
}

/// The grid's usual farming rates, as the default policy: 2.40 USD per CU and 1.00 USD per
/// SU a period, 0.03 USD per GiB of traffic, 0.005 USD per IPv4-hour, 95 % uptime; and a TFT
/// price of 0.08 USD. The worked examples of the tests are computed with these.
pub async fn standard_settings(db: &Db) {
    let policy = registry::ledger::NewPolicy {
        name: "standard".into(),
        rates: accounting::Rates {
            cu: 2_400_000,
            su: 1_000_000,
            nu: 30_000,
            ipv4: 5_000,
            sla_permill: 950,
        },
        default: true,
    };
    let now = gridtypes::now();
    registry::ledger::create_policy(db, &policy, now)
        .await
        .unwrap_or_else(|e| panic!("the standard policy: {e}"));
    registry::ledger::set_price(db, 80_000, now)
        .await
        .unwrap_or_else(|e| panic!("the TFT price: {e}"));
}
