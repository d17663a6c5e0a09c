CREATE TABLE {schema}.dead_letters (
    id                bigserial PRIMARY KEY,
    dlt_topic         text        NOT NULL,
    dlt_partition     integer     NOT NULL,
    dlt_offset        bigint      NOT NULL,
    consumer_group    text        NOT NULL,
    source_topic      text,
    source_partition  integer,
    source_offset     bigint,
    source_timestamp  timestamptz,
    event_id          text,
    event_type        text,
    saga_id           text,
    record_key        text,
    failure_class     text,
    exception_type    text,
    exception_message text,
    stacktrace        text,
    attempts          integer     NOT NULL DEFAULT 1,
    first_failure     timestamptz,
    last_failure      timestamptz,
    key               bytea,
    value             bytea,
    headers           jsonb       NOT NULL,
    status            text        NOT NULL DEFAULT 'new',
    replay_of         bigint REFERENCES {schema}.dead_letters (id),
    replay_count      integer     NOT NULL DEFAULT 0,
    replayed_at       timestamptz,
    resolved_at       timestamptz,
    indexed_at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    UNIQUE (dlt_topic, dlt_partition, dlt_offset)
);
CREATE INDEX dead_letters_filter ON {schema}.dead_letters (status, consumer_group, exception_type, event_type);
CREATE INDEX dead_letters_saga ON {schema}.dead_letters (saga_id);
CREATE TABLE {schema}.audit (
    id       bigserial PRIMARY KEY,
    at       timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor    text        NOT NULL,
    action   text        NOT NULL,
    dry_run  boolean     NOT NULL,
    filter   jsonb       NOT NULL,
    count    integer     NOT NULL,
    details  jsonb       NOT NULL DEFAULT '{}'
);
