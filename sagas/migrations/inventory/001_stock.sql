-- initial - reserved + released = available, and available never goes below zero.
CREATE TABLE {schema}.stock (
    sku       text PRIMARY KEY,
    initial   integer NOT NULL CHECK (initial >= 0),
    available integer NOT NULL CHECK (available >= 0),
    reserved  integer NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    released  integer NOT NULL DEFAULT 0 CHECK (released >= 0),
    CHECK (initial - reserved + released = available)
);
CREATE TABLE {schema}.reservations (
    order_id   text PRIMARY KEY,
    status     text        NOT NULL,
    lines      jsonb       NOT NULL DEFAULT '[]',
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
