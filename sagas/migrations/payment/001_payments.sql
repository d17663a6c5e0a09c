CREATE TABLE {schema}.accounts (
    customer_id   text PRIMARY KEY,
    currency      text   NOT NULL,
    balance_minor bigint NOT NULL CHECK (balance_minor >= 0)
);
-- One row per order: at most one charge and at most one refund, by construction.
CREATE TABLE {schema}.payments (
    order_id       text PRIMARY KEY,
    payment_id     text,
    customer_id    text        NOT NULL,
    currency       text        NOT NULL,
    amount_minor   bigint      NOT NULL CHECK (amount_minor >= 0),
    status         text        NOT NULL,
    charged_minor  bigint      NOT NULL DEFAULT 0,
    refunded_minor bigint      NOT NULL DEFAULT 0 CHECK (refunded_minor <= charged_minor),
    reason         text,
    updated_at     timestamptz NOT NULL DEFAULT clock_timestamp()
);
