-- The phonebook (twins, farms, nodes) and every signed report, kept verbatim.
-- A node's signed registrations are kept in `reports` too (kind 'registration').
CREATE TABLE twins (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    public_key  TEXT    NOT NULL UNIQUE,
    envelope    BLOB    NOT NULL,
    created_at  INTEGER NOT NULL
);

CREATE TABLE farms (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    name        TEXT    NOT NULL UNIQUE,
    twin_id     INTEGER NOT NULL REFERENCES twins(id),
    envelope    BLOB    NOT NULL,
    created_at  INTEGER NOT NULL
);

CREATE TABLE nodes (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    public_key    TEXT    NOT NULL UNIQUE,
    farm_id       INTEGER NOT NULL REFERENCES farms(id),
    serial        TEXT,
    virtualized   INTEGER NOT NULL,
    interfaces    TEXT    NOT NULL,
    agent_version TEXT,
    cru  INTEGER NOT NULL, mru  INTEGER NOT NULL, sru  INTEGER NOT NULL, hru  INTEGER NOT NULL, ipv4  INTEGER NOT NULL,
    used_cru INTEGER NOT NULL DEFAULT 0, used_mru INTEGER NOT NULL DEFAULT 0, used_sru INTEGER NOT NULL DEFAULT 0,
    used_hru INTEGER NOT NULL DEFAULT 0, used_ipv4 INTEGER NOT NULL DEFAULT 0,
    free_cru INTEGER NOT NULL, free_mru INTEGER NOT NULL, free_sru INTEGER NOT NULL, free_hru INTEGER NOT NULL,
    cu REAL NOT NULL,
    su REAL NOT NULL,
    uptime_secs   INTEGER NOT NULL DEFAULT 0,
    traffic_bytes INTEGER NOT NULL DEFAULT 0,
    registered_at INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL,
    last_seen     INTEGER NOT NULL
);
CREATE INDEX nodes_farm ON nodes(farm_id, id);
CREATE INDEX nodes_last_seen ON nodes(last_seen, id);

CREATE TABLE reports (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    node_id     INTEGER NOT NULL REFERENCES nodes(id),
    kind        TEXT    NOT NULL,
    signed_at   INTEGER NOT NULL,
    received_at INTEGER NOT NULL,
    nonce       TEXT    NOT NULL,
    envelope    BLOB    NOT NULL
);
CREATE INDEX reports_node ON reports(node_id, id);

-- Replay protection: each (signer, nonce) is accepted once while its timestamp is in the window.
-- Nonce first: the writer looks a batch of nonces up by nonce alone.
CREATE TABLE nonces (
    signer  TEXT    NOT NULL,
    nonce   TEXT    NOT NULL,
    ts      INTEGER NOT NULL,
    PRIMARY KEY (nonce, signer)
) WITHOUT ROWID;
CREATE INDEX nonces_ts ON nonces(ts);
