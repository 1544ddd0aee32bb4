-- Orders, their transactional outbox, and idempotency keys.
CREATE TABLE orders (
    id          uuid PRIMARY KEY,
    product     text        NOT NULL CHECK (char_length(product) BETWEEN 1 AND 255),
    quantity    integer     NOT NULL CHECK (quantity BETWEEN 1 AND 1000000),
    status      text        NOT NULL CHECK (status IN ('pending', 'confirmed', 'cancelled')),
    version     bigint      NOT NULL CHECK (version >= 1),
    created_at  timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL
);

-- Keyset pages are "id < cursor ORDER BY id DESC" (ids are UUIDv7, so newest first); the primary
-- key serves the unfiltered list, this index the list filtered by status.
CREATE INDEX orders_status_id_idx ON orders (status, id DESC);

CREATE TABLE outbox (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id     uuid        NOT NULL UNIQUE,
    event_type   text        NOT NULL,
    order_id     uuid        NOT NULL,
    payload      jsonb       NOT NULL,
    request_id   text,
    traceparent  text,
    occurred_at  timestamptz NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz
);

CREATE INDEX outbox_unpublished_idx ON outbox (id) WHERE published_at IS NULL;

CREATE TABLE idempotency_keys (
    key          text PRIMARY KEY,
    fingerprint  bytea       NOT NULL,
    order_id     uuid        NOT NULL,
    response     jsonb       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    expires_at   timestamptz NOT NULL
);

CREATE INDEX idempotency_keys_expires_idx ON idempotency_keys (expires_at);
