-- A twin's reservation of capacity on a node. A node's used_* columns are the sum of its
-- active contracts, kept by the writer in the same transaction as the contract itself.
CREATE TABLE contracts (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    twin_id      INTEGER NOT NULL REFERENCES twins(id),
    node_id      INTEGER NOT NULL REFERENCES nodes(id),
    cru INTEGER NOT NULL, mru INTEGER NOT NULL, sru INTEGER NOT NULL, hru INTEGER NOT NULL, ipv4 INTEGER NOT NULL,
    state        TEXT    NOT NULL CHECK (state IN ('active', 'cancelled')),
    envelope     BLOB    NOT NULL,
    created_at   INTEGER NOT NULL,
    cancelled_at INTEGER
);
CREATE INDEX contracts_node ON contracts(node_id, state);
CREATE INDEX contracts_twin ON contracts(twin_id, id);

-- Until now a node's consumption reports set what it called used; from here on the
-- registry's contracts do, and there are none yet.
UPDATE nodes SET used_cru = 0, used_mru = 0, used_sru = 0, used_hru = 0, used_ipv4 = 0,
    free_cru = cru, free_mru = mru, free_sru = sru, free_hru = hru;
