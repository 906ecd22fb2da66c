-- Hardening (issue 9). PostgreSQL's BIGINT columns already refuse anything but integers.

-- Farm names are unique whatever their case: "acme" and "ACME" would be one farm to a person.
CREATE UNIQUE INDEX farms_name_nocase ON farms(lower(name));

-- Replay protection keyed time first (see the SQLite migration): a replay carries the
-- original's signed timestamp, and new keys land at the right edge of the index.
CREATE TABLE nonces_by_time (
    ts      BIGINT NOT NULL,
    signer  TEXT   NOT NULL,
    nonce   TEXT   NOT NULL,
    PRIMARY KEY (ts, signer, nonce)
);
INSERT INTO nonces_by_time (ts, signer, nonce) SELECT ts, signer, nonce FROM nonces;
DROP TABLE nonces;
ALTER TABLE nonces_by_time RENAME TO nonces;

-- 1 while the node's latest message was its last report before an ordered shutdown: it shows
-- `stopped` at once instead of `up` until the up window runs out. Any later message clears it.
ALTER TABLE nodes ADD COLUMN stopping BIGINT NOT NULL DEFAULT 0;
