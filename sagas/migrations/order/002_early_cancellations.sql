-- A CancelOrder that overtook its PlaceOrder (e.g. the PlaceOrder waited in a retry lane):
-- remembered until the order arrives, which is then cancelled before anything is charged.
CREATE TABLE {schema}.early_cancellations (
    order_id     text PRIMARY KEY,
    reason       text        NOT NULL,
    requested_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
