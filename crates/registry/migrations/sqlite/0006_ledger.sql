-- Farming rewards and the TFT ledger (issue 14).

-- Rates a farm's nodes earn at, set by the registry's operator. µUSD per CU and per SU per
-- period, per GiB of traffic, per IPv4-hour; the SLA in permill of the period. A policy is
-- never changed once made (past receipts name it); farms move to a new one instead.
CREATE TABLE farming_policies (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT    NOT NULL UNIQUE,
    cu          INTEGER NOT NULL CHECK (cu >= 0),
    su          INTEGER NOT NULL CHECK (su >= 0),
    nu          INTEGER NOT NULL CHECK (nu >= 0),
    ipv4        INTEGER NOT NULL CHECK (ipv4 >= 0),
    sla_permill INTEGER NOT NULL CHECK (sla_permill BETWEEN 0 AND 1000),
    created_at  INTEGER NOT NULL
);
-- The policy of farms that have none of their own; at most one row.
CREATE TABLE default_policy (
    one       INTEGER PRIMARY KEY CHECK (one = 1),
    policy_id INTEGER NOT NULL REFERENCES farming_policies(id)
);
ALTER TABLE farms ADD COLUMN policy_id INTEGER REFERENCES farming_policies(id);

-- The TFT price in µUSD, as the operator set it over time. A node earns at the price in
-- force when it first registered.
CREATE TABLE tft_prices (
    id        INTEGER PRIMARY KEY AUTOINCREMENT,
    micro_usd INTEGER NOT NULL CHECK (micro_usd > 0),
    set_at    INTEGER NOT NULL
);

-- A node's periods run from the signed time of its first registration; what it had then
-- caps what it is ever rewarded for. Nodes registered before this migration start now-ish.
ALTER TABLE nodes ADD COLUMN connected_at INTEGER;
ALTER TABLE nodes ADD COLUMN connected_cru INTEGER;
ALTER TABLE nodes ADD COLUMN connected_mru INTEGER;
ALTER TABLE nodes ADD COLUMN connected_sru INTEGER;
ALTER TABLE nodes ADD COLUMN connected_hru INTEGER;
ALTER TABLE nodes ADD COLUMN connected_ipv4 INTEGER;
UPDATE nodes SET connected_at = registered_at, connected_cru = cru, connected_mru = mru,
    connected_sru = sru, connected_hru = hru, connected_ipv4 = ipv4;

-- The number a report carries that accounting sums (uptime seconds, traffic bytes), so a
-- period closes without decoding a million envelopes; auditors check it against them.
ALTER TABLE reports ADD COLUMN reading INTEGER;
CREATE INDEX reports_node_kind_time ON reports(node_id, kind, signed_at);
-- Reports stored before the column existed, until the server has filled it in: the server
-- looks for them at every start, and without this index that look reads the whole table.
CREATE INDEX reports_unread ON reports(id)
    WHERE reading IS NULL AND kind IN ('uptime', 'consumption');

-- Double-entry ledger: a transaction's entries add up to zero; `ref` names what it pays
-- for, once (closing a period twice books nothing twice). Accounts: `twin:N`, `mint`
-- (where rewards come from), `deposits` (TFT brought in from outside).
CREATE TABLE ledger_transactions (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    ref        TEXT    NOT NULL UNIQUE,
    kind       TEXT    NOT NULL,
    memo       TEXT    NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE ledger_entries (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    tx_id   INTEGER NOT NULL REFERENCES ledger_transactions(id),
    account TEXT    NOT NULL,
    amount  INTEGER NOT NULL
);
CREATE INDEX ledger_entries_account ON ledger_entries(account, id);
CREATE INDEX ledger_entries_tx ON ledger_entries(tx_id);
-- Each account's balance, kept in the same transaction as its entries (sum of them).
CREATE TABLE ledger_balances (
    account TEXT    PRIMARY KEY,
    balance INTEGER NOT NULL
);

-- One row per closed period of a node: what it proved and earned, with the receipt.
CREATE TABLE periods (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    node_id    INTEGER NOT NULL REFERENCES nodes(id),
    idx        INTEGER NOT NULL,
    start_at   INTEGER NOT NULL,
    end_at     INTEGER NOT NULL,
    farm_id    INTEGER NOT NULL,
    up_secs    INTEGER NOT NULL,
    reports    INTEGER NOT NULL,
    outcome    TEXT    NOT NULL,
    usd        INTEGER NOT NULL,
    tft        INTEGER NOT NULL,
    receipt    TEXT    NOT NULL,
    tx_id      INTEGER REFERENCES ledger_transactions(id),
    closed_at  INTEGER NOT NULL,
    UNIQUE (node_id, idx)
);
CREATE INDEX periods_farm ON periods(farm_id, id);

-- Append-only: history is corrected by new transactions, never by editing old ones.
CREATE TRIGGER ledger_transactions_append_only_u BEFORE UPDATE ON ledger_transactions
BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;
CREATE TRIGGER ledger_transactions_append_only_d BEFORE DELETE ON ledger_transactions
BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;
CREATE TRIGGER ledger_entries_append_only_u BEFORE UPDATE ON ledger_entries
BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;
CREATE TRIGGER ledger_entries_append_only_d BEFORE DELETE ON ledger_entries
BEGIN SELECT RAISE(ABORT, 'the ledger is append-only'); END;
CREATE TRIGGER periods_append_only_u BEFORE UPDATE ON periods
BEGIN SELECT RAISE(ABORT, 'closed periods are append-only'); END;
CREATE TRIGGER periods_append_only_d BEFORE DELETE ON periods
BEGIN SELECT RAISE(ABORT, 'closed periods are append-only'); END;
