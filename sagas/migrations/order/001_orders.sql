CREATE TABLE {schema}.orders (
    order_id        text PRIMARY KEY,
    idempotency_key text        NOT NULL UNIQUE,
    request_hash    text        NOT NULL,
    customer_id     text        NOT NULL,
    currency        text        NOT NULL,
    total_minor     bigint      NOT NULL CHECK (total_minor >= 0),
    items           jsonb       NOT NULL,
    status          text        NOT NULL,
    payment         text        NOT NULL DEFAULT 'pending',
    stock           text        NOT NULL DEFAULT 'pending',
    cancel_reason   text,
    deadline_at     timestamptz,
    created_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    updated_at      timestamptz NOT NULL DEFAULT clock_timestamp(),
    terminal_at     timestamptz
);
CREATE INDEX orders_deadline ON {schema}.orders (deadline_at) WHERE deadline_at IS NOT NULL;
CREATE INDEX orders_status ON {schema}.orders (status);
