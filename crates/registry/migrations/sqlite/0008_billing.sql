-- Billing (issue 14): what twins pay per hour for their contracts, set by the operator in
-- µUSD (per CU-hour, per SU-hour, per GiB of public traffic, per IPv4-hour). The newest row
-- is in force.
CREATE TABLE billing_prices (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    cu      INTEGER NOT NULL CHECK (cu >= 0),
    su      INTEGER NOT NULL CHECK (su >= 0),
    nu      INTEGER NOT NULL CHECK (nu >= 0),
    ipv4    INTEGER NOT NULL CHECK (ipv4 >= 0),
    set_at  INTEGER NOT NULL
);

-- A contract is billed up to billed_until; traffic its node reported for it and not yet
-- billed waits in traffic_unbilled. grace_since is set while its twin cannot pay: the
-- contract keeps running until the grace ends, then it is cancelled.
ALTER TABLE contracts ADD COLUMN billed_until INTEGER;
ALTER TABLE contracts ADD COLUMN traffic_unbilled INTEGER NOT NULL DEFAULT 0;
ALTER TABLE contracts ADD COLUMN grace_since INTEGER;
UPDATE contracts SET billed_until = COALESCE(cancelled_at, created_at);
CREATE INDEX contracts_billing ON contracts(state, billed_until);
