-- Every order belongs to an owner (the caller's token subject; 'anonymous' with AUTH_MODE=none),
-- idempotency keys are per owner, and events record whose order it is and who changed it.
-- Existing rows (and rows written without an owner, such as bulk seeds) belong to 'anonymous';
-- the service always writes the owner itself.
ALTER TABLE orders ADD COLUMN owner text NOT NULL DEFAULT 'anonymous';

-- Per-owner keyset pages: "owner = $ AND id < cursor ORDER BY id DESC".
CREATE INDEX orders_owner_id_idx ON orders (owner, id DESC);

ALTER TABLE idempotency_keys ADD COLUMN owner text NOT NULL DEFAULT 'anonymous';
ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_pkey;
ALTER TABLE idempotency_keys ADD PRIMARY KEY (owner, key);

ALTER TABLE outbox ADD COLUMN owner text, ADD COLUMN actor text;
