CREATE TABLE {schema}.sagas (
    order_id      text PRIMARY KEY,
    saga_id       text        NOT NULL,
    status        text        NOT NULL,
    step          text        NOT NULL,
    reason        text,
    started_at    timestamptz NOT NULL,
    updated_at    timestamptz NOT NULL,
    last_event    text        NOT NULL
);
CREATE INDEX sagas_status_updated ON {schema}.sagas (status, updated_at);
CREATE TABLE {schema}.timeline (
    event_id     text PRIMARY KEY,
    order_id     text        NOT NULL,
    saga_id      text        NOT NULL,
    type         text        NOT NULL,
    source       text        NOT NULL,
    topic        text        NOT NULL,
    occurred_at  timestamptz NOT NULL,
    recorded_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    summary      text        NOT NULL
);
CREATE INDEX timeline_order ON {schema}.timeline (order_id, occurred_at);
