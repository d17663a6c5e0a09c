-- The open-saga reads (the gauges, `sagaline saga list --stuck-for`) now name the open statuses
-- (sagas.tracker.open_status_sql) and go through sagas_status_updated, which PostgreSQL
-- estimates from the status column's statistics. The partial index of 002 was planned from
-- a `NOT IN (terminal)` estimate of a sixth of the table, so it served a parallel bitmap
-- scan, and every saga update paid for one more index entry. Dropped.
DROP INDEX IF EXISTS {schema}.sagas_open_step;
