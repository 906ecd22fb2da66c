-- Hardening (issue 9).
--
-- SQLite stores whatever type a value has: an integer sum that overflows silently becomes a
-- REAL, and every later read of that row failed with "i64 is not compatible with DOUBLE".
-- The writer now bounds and saturates every number; these triggers make the database refuse
-- a non-integer in an integer column anyway, so no future bug can poison a row for readers.

-- Repair rows poisoned before this migration (CAST clamps to the 64-bit range).
UPDATE nodes SET traffic_bytes = CAST(traffic_bytes AS INTEGER) WHERE typeof(traffic_bytes) <> 'integer';
UPDATE nodes SET uptime_secs = CAST(uptime_secs AS INTEGER) WHERE typeof(uptime_secs) <> 'integer';

CREATE TRIGGER nodes_integers_insert BEFORE INSERT ON nodes
WHEN typeof(NEW.cru) <> 'integer' OR typeof(NEW.mru) <> 'integer' OR typeof(NEW.sru) <> 'integer'
  OR typeof(NEW.hru) <> 'integer' OR typeof(NEW.ipv4) <> 'integer'
  OR typeof(NEW.used_cru) <> 'integer' OR typeof(NEW.used_mru) <> 'integer'
  OR typeof(NEW.used_sru) <> 'integer' OR typeof(NEW.used_hru) <> 'integer'
  OR typeof(NEW.used_ipv4) <> 'integer'
  OR typeof(NEW.free_cru) <> 'integer' OR typeof(NEW.free_mru) <> 'integer'
  OR typeof(NEW.free_sru) <> 'integer' OR typeof(NEW.free_hru) <> 'integer'
  OR typeof(NEW.uptime_secs) <> 'integer' OR typeof(NEW.traffic_bytes) <> 'integer'
  OR typeof(NEW.registered_at) <> 'integer' OR typeof(NEW.updated_at) <> 'integer'
  OR typeof(NEW.last_seen) <> 'integer' OR typeof(NEW.farm_id) <> 'integer'
  OR typeof(NEW.virtualized) <> 'integer'
BEGIN
  SELECT RAISE(ABORT, 'nodes: a non-integer value in an integer column');
END;

CREATE TRIGGER nodes_integers_update BEFORE UPDATE ON nodes
WHEN typeof(NEW.cru) <> 'integer' OR typeof(NEW.mru) <> 'integer' OR typeof(NEW.sru) <> 'integer'
  OR typeof(NEW.hru) <> 'integer' OR typeof(NEW.ipv4) <> 'integer'
  OR typeof(NEW.used_cru) <> 'integer' OR typeof(NEW.used_mru) <> 'integer'
  OR typeof(NEW.used_sru) <> 'integer' OR typeof(NEW.used_hru) <> 'integer'
  OR typeof(NEW.used_ipv4) <> 'integer'
  OR typeof(NEW.free_cru) <> 'integer' OR typeof(NEW.free_mru) <> 'integer'
  OR typeof(NEW.free_sru) <> 'integer' OR typeof(NEW.free_hru) <> 'integer'
  OR typeof(NEW.uptime_secs) <> 'integer' OR typeof(NEW.traffic_bytes) <> 'integer'
  OR typeof(NEW.registered_at) <> 'integer' OR typeof(NEW.updated_at) <> 'integer'
  OR typeof(NEW.last_seen) <> 'integer' OR typeof(NEW.farm_id) <> 'integer'
  OR typeof(NEW.virtualized) <> 'integer'
BEGIN
  SELECT RAISE(ABORT, 'nodes: a non-integer value in an integer column');
END;

CREATE TRIGGER reports_integers_insert BEFORE INSERT ON reports
WHEN typeof(NEW.node_id) <> 'integer' OR typeof(NEW.signed_at) <> 'integer'
  OR typeof(NEW.received_at) <> 'integer'
BEGIN
  SELECT RAISE(ABORT, 'reports: a non-integer value in an integer column');
END;

-- Farm names are unique whatever their case: "acme" and "ACME" would be one farm to a person.
CREATE UNIQUE INDEX farms_name_nocase ON farms(lower(name));

-- Replay protection keyed time first. A replay is the same signed bytes, so it carries the
-- same timestamp: (ts, signer, nonce) finds it exactly, and new rows land at the right edge
-- of the B-tree (ts is within 300 s of now) instead of on a random page each, which cut the
-- pages every ingest batch rewrites. Pruning takes the left edge.
CREATE TABLE nonces_by_time (
    ts      INTEGER NOT NULL,
    signer  TEXT    NOT NULL,
    nonce   TEXT    NOT NULL,
    PRIMARY KEY (ts, signer, nonce)
) WITHOUT ROWID;
INSERT INTO nonces_by_time (ts, signer, nonce) SELECT ts, signer, nonce FROM nonces;
DROP TABLE nonces;
ALTER TABLE nonces_by_time RENAME TO nonces;

-- 1 while the node's latest message was its last report before an ordered shutdown: it shows
-- `stopped` at once instead of `up` until the up window runs out. Any later message clears it.
ALTER TABLE nodes ADD COLUMN stopping INTEGER NOT NULL DEFAULT 0;
