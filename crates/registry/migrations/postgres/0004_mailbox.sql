-- Node mailboxes. A contract row carries the twin's newest sealed deployment (its signed
-- Deploy envelope, verbatim) and the node's newest sealed status (its signed
-- DeploymentStatus envelope); the registry reads neither box. `rev` orders a node's
-- mailbox: every change to a contract (created, cancelled, new deployment) takes the
-- node's next `mailbox_rev`, under the node's row lock, so a node that polls after the
-- revision it has handled misses nothing.
ALTER TABLE nodes ADD COLUMN box_key TEXT;
ALTER TABLE nodes ADD COLUMN mailbox_rev BIGINT NOT NULL DEFAULT 0;
ALTER TABLE contracts ADD COLUMN rev BIGINT NOT NULL DEFAULT 0;
ALTER TABLE contracts ADD COLUMN deployment_version BIGINT;
ALTER TABLE contracts ADD COLUMN deployment BYTEA;
ALTER TABLE contracts ADD COLUMN status_version BIGINT;
ALTER TABLE contracts ADD COLUMN status_signed_at BIGINT;
ALTER TABLE contracts ADD COLUMN status BYTEA;

-- Contracts made before mailboxes: each node's existing contracts in id order.
UPDATE contracts SET rev = id;
UPDATE nodes SET mailbox_rev = COALESCE((SELECT MAX(id) FROM contracts WHERE node_id = nodes.id), 0);
CREATE INDEX contracts_mailbox ON contracts(node_id, rev);
